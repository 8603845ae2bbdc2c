//! Op-by-op comparison with llama.cpp, on llama.cpp's own intermediate tensors: each op of our
//! forward pass is fed ggml's input for that op, and its output must equal ggml's to the bit, so a
//! difference is that op's alone. This is the check behind README's parity claim. The tensors
//! (layers 0, 1 and 29 of SmolLM2, a 4-token prompt and one decode step after it) are recorded
//! once by `models/tests/data/record_ggml_ops.py` into `models/tests/data/ggml_ops/`.

use super::*;

/// One recorded llama_decode: its tensors by ggml name, the tokens and the first position.
struct Dump {
    blob: Vec<u8>,
    index: serde_json::Value,
    ids: Vec<usize>,
    pos0: usize,
}

impl Dump {
    fn open(stem: &str) -> Dump {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ggml_ops");
        let read = |ext: &str| {
            let p = dir.join(format!("{stem}.{ext}"));
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (recorded by models/tests/data/record_ggml_ops.py)", p.display()))
        };
        let index: serde_json::Value = serde_json::from_slice(&read("json")).unwrap();
        let pos0 = index["pos0"].as_u64().unwrap() as usize;
        let ids = if stem == "decode" {
            vec![index["decode_token"].as_u64().unwrap() as usize]
        } else {
            index["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        };
        Dump {
            blob: read("bin"),
            index,
            ids,
            pos0,
        }
    }

    fn get(&self, name: &str) -> Vec<f32> {
        let t = &self.index["tensors"][name];
        assert!(t.is_object(), "tensor {name} was not recorded");
        let (off, n) = (t["offset"].as_u64().unwrap() as usize, t["count"].as_u64().unwrap() as usize);
        match t["dtype"].as_str().unwrap() {
            "f32" => self.blob[off..off + 4 * n]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            _ => self.blob[off..off + 2 * n]
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

/// Asserts that `ours` equals ggml's tensor to the bit, element for element.
fn same_bits(op: &str, ours: &[f32], theirs: &[f32], report: &mut Vec<String>) {
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{op}: {} values here, {} in ggml",
        ours.len(),
        theirs.len()
    );
    assert!(!ours.is_empty(), "{op}: nothing compared");
    let differ = ours.iter().zip(theirs).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    let max = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    report.push(format!(
        "{op:<34} {}/{} bit-exact, max |Δ| {max:.3e}",
        ours.len() - differ,
        ours.len()
    ));
    assert_eq!(
        differ,
        0,
        "{op}: {differ} of {} values differ from ggml's (max |Δ| {max:.3e})",
        ours.len()
    );
}

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod files;

#[test]
fn every_op_equals_ggml_on_a_prompt() {
    check(&Dump::open("prompt"));
}

#[test]
fn every_op_equals_ggml_on_a_decode_step() {
    check(&Dump::open("decode"));
}

fn check(dump: &Dump) {
    let path = files::smollm2();
    let mut f = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut f).unwrap();
    let m = Llama::load(&path, &content, 1024, &mut |_, _| {}).unwrap();
    let (ids, pos0) = (dump.ids.clone(), dump.pos0);
    let load = |name: &str| dump.get(name);
    let mut out = Vec::new();
    let report = |op: &str, ours: &[f32], theirs: &[f32], out: &mut Vec<String>| same_bits(op, ours, theirs, out);
    let c = &m.cfg;
    let (e, hd, n) = (c.n_embd, c.head_dim, ids.len());
    let (qd, kvd) = (c.n_head * hd, c.n_kv_head * hd);
    for li in [0usize, 1, c.n_layer - 1] {
        let layer = &m.layers[li];
        let l = |s: &str| format!("{s}-{li}");
        if li == 0 {
            let mut embd = vec![0f32; n * e];
            for (r, &t) in ids.iter().enumerate() {
                m.tok_embd.row_f32(t, &mut embd[r * e..(r + 1) * e]);
            }
            report("embd", &embd, &load("embd"), &mut out);
        }
        let x = load(&if li == 0 { "embd".to_string() } else { format!("l_out-{}", li - 1) });
        let mut h = vec![0f32; n * e];
        m.rms_norm(&x, &layer.attn_norm, &mut h);
        report(&l("attn_norm"), &h, &load(&l("attn_norm")), &mut out);
        let an = load(&l("attn_norm"));
        let (mut q, mut k, mut v) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        matmul(&layer.wq, &an, &mut q);
        matmul(&layer.wk, &an, &mut k);
        matmul(&layer.wv, &an, &mut v);
        report(&l("Qcur (matmul)"), &q, &load(&l("Qcur")), &mut out);
        report(&l("Kcur (matmul)"), &k, &load(&l("Kcur")), &mut out);
        report(&l("Vcur (matmul)"), &v, &load(&l("Vcur")), &mut out);
        let mut q = load(&l("Qcur"));
        for r in 0..n {
            m.rope(&mut q[r * qd..(r + 1) * qd], pos0 + r, c.n_head, false);
        }
        report(&l("Qcur (rope)"), &q, &load(&format!("Qcur-{li}#2")), &mut out);
        // kq: [head][query row][kv position (256, padded)] = K(f16) · Q, unscaled.
        let qr = load(&format!("Qcur-{li}#2"));
        let kc = load(&format!("cache_k_l{li} (view)"));
        let kq_g = load(&l("kq"));
        let kv_len = kq_g.len() / (n * c.n_head);
        let group = c.n_head / c.n_kv_head;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for hh in 0..c.n_head {
            for r in 0..n {
                let mut qh = qr[r * qd + hh * hd..r * qd + (hh + 1) * hd].to_vec();
                attn::round_through_f16(&mut qh);
                for t in 0..=pos0 + r {
                    let kh = &kc[t * kvd + (hh / group) * hd..t * kvd + (hh / group + 1) * hd];
                    ours.push(if n == 1 {
                        abstractgateway_kernels::ggml_order::dot_f16_single(&qh, kh)
                    } else {
                        abstractgateway_kernels::ggml_order::dot_f16(&qh, kh)
                    });
                    theirs.push(kq_g[(hh * n + r) * kv_len + t]);
                }
            }
        }
        report(&l("kq (f16 dot)"), &ours, &theirs, &mut out);
        // softmax of ggml's kq, scaled, causal.
        let sm_g = load(&l("kq_soft_max"));
        let scale = 1.0 / (hd as f32).sqrt();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for hh in 0..c.n_head {
            for r in 0..n {
                let row = &kq_g[(hh * n + r) * kv_len..(hh * n + r) * kv_len + pos0 + r + 1];
                let mut w: Vec<f32> = row.iter().map(|s| s * scale).collect();
                abstractgateway_kernels::ggml_order::soft_max(&mut w, 0);
                ours.extend_from_slice(&w);
                theirs.extend_from_slice(&sm_g[(hh * n + r) * kv_len..(hh * n + r) * kv_len + pos0 + r + 1]);
            }
        }
        report(&l("kq_soft_max"), &ours, &theirs, &mut out);
        // kqv: softmax (through f16) times V (f16, stored transposed: channel-major over 1024 slots).
        let vc = load(&format!("cache_v_l{li} (reshaped) (view)"));
        let slots = vc.len() / kvd;
        let kqv_g = load(&l("kqv"));
        let mut ours = vec![0f32; c.n_head * n * hd];
        for hh in 0..c.n_head {
            for r in 0..n {
                let mut w = sm_g[(hh * n + r) * kv_len..(hh * n + r) * kv_len + pos0 + r + 1].to_vec();
                attn::round_through_f16(&mut w);
                let out = &mut ours[(hh * n + r) * hd..(hh * n + r + 1) * hd];
                let rows: Vec<Vec<f32>> = (0..=pos0 + r)
                    .map(|t| (0..hd).map(|d| vc[((hh / group) * hd + d) * slots + t]).collect())
                    .collect();
                if n == 1 {
                    abstractgateway_kernels::ggml_order::weighted_sum_f16_single(&w, 0, |t| &rows[t][..], out);
                } else {
                    abstractgateway_kernels::ggml_order::weighted_sum_f16(&w, 0, |t| &rows[t][..], out);
                }
            }
        }
        report(&l("kqv"), &ours, &kqv_g, &mut out);
        let kqv_out = load(&l("kqv_out"));
        let mut o = vec![0f32; kqv_out.len() / qd * e];
        matmul(&layer.wo, &kqv_out, &mut o);
        report(&l("attn_out (matmul)"), &o, &load(&l("attn_out")), &mut out);
        // In the last layer of a prompt, ggml keeps only the rows whose logits are wanted (the
        // last one) from here on: the ops below run on the rows it kept.
        let ffn_inp = load(&l("ffn_inp"));
        let rows = ffn_inp.len() / e;
        assert!(rows == n || (li == c.n_layer - 1 && rows == 1), "layer {li}: {rows} rows");
        let mut h = vec![0f32; rows * e];
        m.rms_norm(&ffn_inp, &layer.ffn_norm, &mut h);
        report(&l("ffn_norm"), &h, &load(&l("ffn_norm")), &mut out);
        let fnorm = load(&l("ffn_norm"));
        let (mut g, mut u) = (vec![0f32; rows * c.n_ff], vec![0f32; rows * c.n_ff]);
        matmul(&layer.w_gate, &fnorm, &mut g);
        matmul(&layer.w_up, &fnorm, &mut u);
        report(&l("ffn_gate (matmul)"), &g, &load(&l("ffn_gate")), &mut out);
        report(&l("ffn_up (matmul)"), &u, &load(&l("ffn_up")), &mut out);
        let (gg, ug) = (load(&l("ffn_gate")), load(&l("ffn_up")));
        let mut sw = gg.clone();
        for (gr, ur) in sw.chunks_mut(c.n_ff).zip(ug.chunks(c.n_ff)) {
            abstractgateway_kernels::ggml_order::swiglu_row(gr, ur);
        }
        report(&l("ffn_swiglu"), &sw, &load(&l("ffn_swiglu")), &mut out);
        let mut d = vec![0f32; rows * e];
        matmul(&layer.w_down, &load(&l("ffn_swiglu")), &mut d);
        report(&l("ffn_out (matmul)"), &d, &load(&l("ffn_out")), &mut out);
    }
    eprintln!("{}", out.join("\n"));
}
