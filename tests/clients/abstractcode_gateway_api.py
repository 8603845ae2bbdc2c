"""Drives the gateway with the upstream thin client `abstractcode.gateway_cli.GatewayApi`
(abstractcode 0.3.8), exactly as the upstream transcripts do. Prints one JSON line of results."""
import json, os, time
from abstractcode.gateway_cli import GatewayApi

api = GatewayApi(base_url=os.environ["GW_URL"], token=os.environ["GW_TOKEN"])


def wait_for(rid, status):
    for _ in range(500):
        if api.get_run(rid)["status"] == status:
            return True
        time.sleep(0.01)
    return False


out = {}
rid = api.start_run(flow_id="wait", bundle_id="test-wait", input_data={"event_key": "evt:session:py-client-1:go"})
out["waiting"] = wait_for(rid, "waiting")
out["cancel_ack"] = api.submit_command(run_id=rid, typ="cancel", payload={"reason": "client demo"})
out["cancelled"] = wait_for(rid, "cancelled")
out["next_after"] = api.get_ledger(rid, after=0)["next_after"]
out["error"] = api.get_run(rid)["error"]
rid2 = api.start_run(flow_id="noop", bundle_id="test-noop", input_data={"x": "from abstractcode"})
out["noop_completed"] = wait_for(rid2, "completed")
out["noop_output"] = api.get_run(rid2).get("output")
print(json.dumps(out))
