//! Op-by-op comparison with llama.cpp, on llama.cpp's own intermediate tensors: each op of our
//! forward pass is fed ggml's input for that op and compared with ggml's output, so a difference
//! is that op's alone. The tensors come from `models/tests/data/dump_ggml_tensors.py`; run with
//! `GGML_DUMP=dir cargo test -p abstractgateway-models --lib ggml_check -- --ignored --nocapture`
//! (with `GGML_DECODE=60` for a decode-step dump). Every op of layers 0, 1 and 29 was bit-exact
//! on both when this landed.

use super::*;

fn load(dir: &Path, name: &str) -> Vec<f32> {
    let b = std::fs::read(dir.join(format!("{name}.bin"))).unwrap_or_else(|e| panic!("{name}: {e}"));
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn load_f16(dir: &Path, name: &str) -> Vec<f32> {
    let b = std::fs::read(dir.join(format!("{name}.bin"))).unwrap_or_else(|e| panic!("{name}: {e}"));
    b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
}

fn report(op: &str, ours: &[f32], theirs: &[f32]) {
    let n = ours.len().min(theirs.len());
    let (mut max, mut exact) = (0f32, 0usize);
    let mut scale = 0f32;
    for i in 0..n {
        let d = (ours[i] - theirs[i]).abs();
        max = max.max(d);
        scale = scale.max(theirs[i].abs());
        exact += usize::from(ours[i].to_bits() == theirs[i].to_bits());
    }
    println!("{op:<34} bit-exact {exact:>7}/{n:<7} max |Δ| {max:.3e} (max |ggml| {scale:.3e})");
}

#[test]
#[ignore]
fn ggml_check() {
    let Some(dir) = std::env::var_os("GGML_DUMP").map(std::path::PathBuf::from) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(".models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut f = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut f).unwrap();
    let m = Llama::load(&path, &content, 1024, &mut |_, _| {}).unwrap();
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("models/tests/data/smollm2_greedy.json")).unwrap()).unwrap();
    let mut ids: Vec<usize> = refs["cases"][0]["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    // A decode-step dump (`DECODE=token`): one row at the position after the prompt.
    let pos0 = match std::env::var("GGML_DECODE").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(t) => {
            let p = ids.len();
            ids = vec![t];
            p
        }
        None => 0,
    };
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
            report("embd", &embd, &load(&dir, "embd"));
        }
        let x = load(&dir, &if li == 0 { "embd".to_string() } else { format!("l_out-{}", li - 1) });
        let mut h = vec![0f32; n * e];
        m.rms_norm(&x, &layer.attn_norm, &mut h);
        report(&l("attn_norm"), &h, &load(&dir, &l("attn_norm")));
        let an = load(&dir, &l("attn_norm"));
        let (mut q, mut k, mut v) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        matmul(&layer.wq, &an, &mut q);
        matmul(&layer.wk, &an, &mut k);
        matmul(&layer.wv, &an, &mut v);
        report(&l("Qcur (matmul)"), &q, &load(&dir, &l("Qcur")));
        report(&l("Kcur (matmul)"), &k, &load(&dir, &l("Kcur")));
        report(&l("Vcur (matmul)"), &v, &load(&dir, &l("Vcur")));
        let mut q = load(&dir, &l("Qcur"));
        for r in 0..n {
            m.rope(&mut q[r * qd..(r + 1) * qd], pos0 + r, c.n_head, false);
        }
        report(&l("Qcur (rope)"), &q, &load(&dir, &format!("Qcur-{li}#2")));
        // kq: [head][query row][kv position (256, padded)] = K(f16) · Q, unscaled.
        let qr = load(&dir, &format!("Qcur-{li}#2"));
        let kc = load_f16(&dir, &format!("cache_k_l{li} (view)"));
        let kq_g = load(&dir, &l("kq"));
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
        report(&l("kq (f16 dot)"), &ours, &theirs);
        // softmax of ggml's kq, scaled, causal.
        let sm_g = load(&dir, &l("kq_soft_max"));
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
        report(&l("kq_soft_max"), &ours, &theirs);
        // kqv: softmax (through f16) times V (f16, stored transposed: channel-major over 1024 slots).
        let vc = load_f16(&dir, &format!("cache_v_l{li} (reshaped) (view)"));
        let slots = vc.len() / kvd;
        let kqv_g = load(&dir, &l("kqv"));
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
        report(&l("kqv"), &ours, &kqv_g);
        let mut o = vec![0f32; n * e];
        matmul(&layer.wo, &load(&dir, &l("kqv_out")), &mut o);
        report(&l("attn_out (matmul)"), &o, &load(&dir, &l("attn_out")));
        let mut h = vec![0f32; n * e];
        m.rms_norm(&load(&dir, &l("ffn_inp")), &layer.ffn_norm, &mut h);
        report(&l("ffn_norm"), &h, &load(&dir, &l("ffn_norm")));
        let fnorm = load(&dir, &l("ffn_norm"));
        let (mut g, mut u) = (vec![0f32; n * c.n_ff], vec![0f32; n * c.n_ff]);
        matmul(&layer.w_gate, &fnorm, &mut g);
        matmul(&layer.w_up, &fnorm, &mut u);
        report(&l("ffn_gate (matmul)"), &g, &load(&dir, &l("ffn_gate")));
        report(&l("ffn_up (matmul)"), &u, &load(&dir, &l("ffn_up")));
        let (gg, ug) = (load(&dir, &l("ffn_gate")), load(&dir, &l("ffn_up")));
        let mut sw = gg.clone();
        for (gr, ur) in sw.chunks_mut(c.n_ff).zip(ug.chunks(c.n_ff)) {
            abstractgateway_kernels::ggml_order::swiglu_row(gr, ur);
        }
        report(&l("ffn_swiglu"), &sw, &load(&dir, &l("ffn_swiglu")));
        let mut d = vec![0f32; n * e];
        matmul(&layer.w_down, &load(&dir, &l("ffn_swiglu")), &mut d);
        report(&l("ffn_out (matmul)"), &d, &load(&dir, &l("ffn_out")));
    }
}
