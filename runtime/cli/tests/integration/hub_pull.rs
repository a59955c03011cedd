//! `pagedrt pull ORG/NAME` and `--model ORG/NAME` against a local stand-in for the Hugging
//! Face Hub (`common::hub`) that serves a tiny random Llama the test writes as safetensors:
//! the standard cache layout, a second pull and `HF_HUB_OFFLINE` that make no request, a
//! sharded model behind a token, a download cut half-way (resumed with a `Range` request), a
//! missing shard and a wrong checksum (errors naming the file). The downloaded model must
//! generate exactly what `dummy:` weights of the same config and seed generate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::hub::{serve, Faults, HubFile, COMMIT};
use crate::common::{pagedrt, tmp, RunOk};

const REPO: &str = "pagedrt-test/tiny-llama";

/// A 2-layer Llama (hidden 64, byte-level vocabulary) with the weights `dummy:` gives for
/// seed 0, as Hub files in `shards` safetensors files; and its config.json's path.
fn tiny_model(shards: usize) -> (HashMap<String, HubFile>, PathBuf) {
    let cfg_path = crate::common::http::small_llama_config("hub", 64, 4, 2);
    let cfg = std::fs::read(&cfg_path).unwrap();
    let (h, kv, inter, vocab) = (64usize, 32usize, 128usize, 259usize);
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("mlp.gate_proj.weight", vec![inter, h]),
            ("mlp.up_proj.weight", vec![inter, h]),
            ("mlp.down_proj.weight", vec![h, inter]),
        ] {
            tensors.push((format!("{p}.{n}"), s));
        }
    }
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(n, s)| {
            models::dummy::dummy_tensor(n, s, 0)
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect()
        })
        .collect();
    let mut files = HashMap::new();
    let text = |s: &str| HubFile {
        bytes: s.as_bytes().to_vec(),
        lfs: false,
    };
    files.insert(
        "config.json".to_string(),
        HubFile {
            bytes: cfg,
            lfs: false,
        },
    );
    files.insert(
        "tokenizer.json".to_string(),
        text(&models::dummy::byte_level_tokenizer_json()),
    );
    files.insert(
        "tokenizer_config.json".to_string(),
        text(r#"{"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}"#),
    );
    files.insert("README.md".to_string(), text("# not downloaded"));
    let per = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (si, chunk) in tensors.chunks(per).enumerate() {
        let name = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", si + 1)
        };
        let views: Vec<(String, safetensors::tensor::TensorView)> = chunk
            .iter()
            .enumerate()
            .map(|(i, (n, s))| {
                let bytes = &data[si * per + i];
                let view =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), bytes)
                        .unwrap();
                weight_map.insert(n.clone(), name.clone().into());
                (n.clone(), view)
            })
            .collect();
        let bytes = safetensors::tensor::serialize(views, &None).unwrap();
        files.insert(name, HubFile { bytes, lfs: true });
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string();
        files.insert("model.safetensors.index.json".into(), text(&index));
    }
    (files, cfg_path)
}

/// `pagedrt` with the Hub at `endpoint` and its cache under `home`.
fn hub_cmd(endpoint: &str, home: &Path) -> std::process::Command {
    let mut c = pagedrt();
    c.env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE");
    c
}

fn greedy(model: &str, cmd: &mut std::process::Command) -> String {
    let out = cmd
        .args([
            "generate",
            "--model",
            model,
            "--prompt",
            "Hello hub",
            "--max-tokens",
            "12",
        ])
        .args(["--temperature", "0", "--ignore-eos", "--num-blocks", "64"])
        .run_ok();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_hub_model_is_pulled_into_the_cache_used_again_and_offline() {
    let (files, cfg) = tiny_model(1);
    let hub = serve(REPO, files.clone(), None, Faults::default());
    let home = tmp("hf-home");
    let out = hub_cmd(&hub.endpoint(), &home)
        .args(["pull", &format!("{REPO}@v1")])
        .run_ok();
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let repo_dir = home.join("hub").join("models--pagedrt-test--tiny-llama");
    assert_eq!(dir, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs").join("v1")).unwrap(),
        COMMIT
    );
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), files[f].bytes, "{f}");
    }
    assert!(
        !dir.join("README.md").exists(),
        "only the model's files are fetched"
    );
    let first = hub.requests().len();
    // Used as it is: the second pull and --model make no request at all.
    hub_cmd(&hub.endpoint(), &home)
        .args(["pull", &format!("{REPO}@v1")])
        .run_ok();
    let from_hub = greedy(&format!("{REPO}@v1"), &mut hub_cmd(&hub.endpoint(), &home));
    assert_eq!(hub.requests().len(), first, "{:?}", hub.requests());
    // The same weights as dummy: of the same config and seed.
    let dummy = greedy(&format!("dummy:{}", cfg.display()), &mut pagedrt());
    assert_eq!(from_hub, dummy);
    assert!(!from_hub.trim().is_empty());
    // Offline: the cache serves, and a model not in it is an error that says why.
    let mut offline = hub_cmd("http://127.0.0.1:9", &home);
    offline
        .env("HF_HUB_OFFLINE", "1")
        .args(["pull", &format!("{REPO}@v1")])
        .run_ok();
    hub_cmd("http://127.0.0.1:9", &tmp("hf-empty"))
        .env("HF_HUB_OFFLINE", "1")
        .args(["pull", REPO])
        .run_fails_with("HF_HUB_OFFLINE");
}

#[test]
fn a_sharded_model_behind_a_token_resumes_a_cut_download() {
    let (files, _) = tiny_model(3);
    let shard = "model-00002-of-00003.safetensors";
    let faults = Faults {
        cut_once: Some(shard.into()),
        ..Faults::default()
    };
    let hub = serve(REPO, files.clone(), Some("hf_secret"), faults);
    let home = tmp("hf-sharded");
    hub_cmd(&hub.endpoint(), &home)
        .args(["pull", REPO])
        .run_fails_with("HF_TOKEN");
    let out = hub_cmd(&hub.endpoint(), &home)
        .env("HF_TOKEN", "hf_secret")
        .args(["pull", REPO])
        .run_ok();
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    for (name, f) in &files {
        if name.ends_with(".safetensors") || name == "model.safetensors.index.json" {
            assert_eq!(&std::fs::read(dir.join(name)).unwrap(), &f.bytes, "{name}");
        }
    }
    // The cut shard was fetched again from where it broke off, not from the start.
    let half = files[shard].bytes.len() / 2;
    let resumed: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.contains(shard) && r.contains(&format!("bytes={half}-")))
        .collect();
    assert_eq!(resumed.len(), 1, "{:?}", hub.requests());
    let mut cmd = hub_cmd(&hub.endpoint(), &home);
    greedy(REPO, cmd.env("HF_TOKEN", "hf_secret"));
}

#[test]
fn a_missing_shard_and_a_wrong_checksum_name_the_file() {
    let (files, _) = tiny_model(2);
    let shard = "model-00001-of-00002.safetensors";
    let missing = serve(
        REPO,
        files.clone(),
        None,
        Faults {
            missing: Some(shard.into()),
            ..Faults::default()
        },
    );
    let home = tmp("hf-missing");
    hub_cmd(&missing.endpoint(), &home)
        .args(["pull", REPO])
        .run_fails_with(&format!("{shard}: HTTP 404"));
    let shard_len = files[shard].bytes.len() as u64;
    let corrupt = serve(
        REPO,
        files,
        None,
        Faults {
            wrong_etag: Some(shard.into()),
            ..Faults::default()
        },
    );
    let home = tmp("hf-corrupt");
    hub_cmd(&corrupt.endpoint(), &home)
        .args(["pull", REPO])
        .run_fails_with(&format!("{shard}: checksum mismatch"));
    // Nothing corrupt is left behind to be used later.
    let blobs = home.join("hub/models--pagedrt-test--tiny-llama/blobs");
    let sizes: Vec<u64> = std::fs::read_dir(&blobs)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .collect();
    assert!(!sizes.contains(&shard_len), "{sizes:?}");
}
