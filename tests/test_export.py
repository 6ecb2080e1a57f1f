import json
import subprocess
import sys

import pytest
import torch

from autodistil.export import STUDENT_META, export_subnet
from autodistil.nn import SuperBert, SuperBertConfig, load_supernet, save_supernet
from autodistil.space import SubnetConfig
from conftest import randomize_

LOADER = r'''
import sys, json, torch
import autodistil  # registers AutoDistilBert with AutoModel
from transformers import AutoModel
ids, mask = torch.load(sys.argv[1])
outs = {}
for folder in json.loads(sys.argv[2]):
    m = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        o = m(input_ids=ids, attention_mask=mask)
    outs[folder] = (type(m).__name__, o.last_hidden_state, o.pooler_output)
torch.save(outs, sys.argv[3])
'''


def _subnets(space):
    lo, hi = space.smallest(), space.largest()
    return [
        lo,
        hi,
        SubnetConfig(hi.layers, lo.hidden, lo.ffn_ratio, lo.heads),
        SubnetConfig(lo.layers, hi.hidden, lo.ffn_ratio, lo.heads),
        SubnetConfig(lo.layers, lo.hidden, hi.ffn_ratio, hi.heads),
        SubnetConfig(2, 48, 2.5, 3),
        SubnetConfig(2, 64, 2.0, 2),
        SubnetConfig(3, 32, 3.0, 4),
    ]


def test_exported_students_match_supernet_in_fresh_process(small_space, tmp_path, tokenizer):
    sb = randomize_(
        SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=tokenizer.vocab_size))
    ).eval()
    enc = tokenizer(
        ["a short one", "a somewhat longer sentence to pad against"], padding=True, return_tensors="pt"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    expected, folders = {}, []
    for cfg in _subnets(small_space):
        assert cfg in small_space
        folder = str(tmp_path / cfg.short())
        export_subnet(sb, cfg, folder, tokenizer=tokenizer)
        with torch.no_grad():
            o = sb(ids, mask, subnet=cfg)
        expected[folder] = (cfg, o.last_hidden_state, o.pooler_output)
        folders.append(folder)
        saved = open(f"{folder}/model.safetensors", "rb").read(200000)
        assert b"supernet" not in saved
        meta = json.loads(open(f"{folder}/{STUDENT_META}").read())
        assert meta["needs_autodistil"] == (cfg.heads * 16 != cfg.hidden)
    torch.save((ids, mask), tmp_path / "in.pt")
    subprocess.run(
        [
            sys.executable,
            "-c",
            LOADER,
            str(tmp_path / "in.pt"),
            json.dumps(folders),
            str(tmp_path / "out.pt"),
        ],
        check=True,
    )
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    valid = mask.bool()
    for folder, (cfg, last, pooled) in expected.items():
        cls, g_last, g_pooled = got[folder]
        assert cls == ("BertModel" if cfg.heads * 16 == cfg.hidden else "AutoDistilBertModel"), cfg
        assert (g_last - last)[valid].abs().max() <= 1e-5, cfg
        assert (g_pooled - pooled).abs().max() <= 1e-5, cfg
    assert {got[f][0] for f in folders} == {"BertModel", "AutoDistilBertModel"}


def test_supernet_checkpoint_round_trip_and_refusals(small_space, tmp_path):
    sb = randomize_(SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=300)))
    folder = save_supernet(tmp_path / "ck", sb, [small_space], teacher={"name": "t", "sha256": "a" * 64})
    m2, spaces, meta = load_supernet(folder, teacher_sha256="a" * 64, spaces=[small_space])
    for (n, p), (_, q) in zip(sb.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p, q), n
    assert spaces == [small_space]
    with pytest.raises(ValueError, match="was distilled from teacher 't' .*not the teacher given"):
        load_supernet(folder, teacher_sha256="b" * 64)
    from autodistil.space import PAPER_SPACES

    with pytest.raises(ValueError, match="was trained for spaces \\['unit'\\]"):
        load_supernet(folder, spaces=[PAPER_SPACES["tiny"]])
    (folder / "supernet.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="supernet weights .* are corrupt"):
        load_supernet(folder)
    (folder / "supernet.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_supernet(folder)
    with pytest.raises(FileNotFoundError, match="supernet folder not found"):
        load_supernet(tmp_path / "missing")


def test_checkpoint_shape_mismatch_is_refused(small_space, tmp_path):
    sb = SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=300))
    folder = save_supernet(tmp_path / "ck", sb, [small_space])
    meta = json.loads((folder / "supernet.json").read_text())
    meta["model"]["hidden"] = 80
    (folder / "supernet.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match supernet.json: .*wrong shape"):
        load_supernet(folder)


def test_onnx_export_matches_torch(small_space, tmp_path, tokenizer):
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    from autodistil.export import export_onnx

    sb = randomize_(
        SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=tokenizer.vocab_size))
    ).eval()
    enc = tokenizer(["short", "a longer sentence with padding against it"], padding=True, return_tensors="pt")
    for cfg in (SubnetConfig(2, 32, 2.0, 2), SubnetConfig(2, 48, 2.5, 2)):  # BertModel and AutoDistilBert
        folder = export_subnet(sb, cfg, tmp_path / cfg.short(), tokenizer=tokenizer)
        path = export_onnx(folder, seq_len=8)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: enc[i.name].numpy() for i in sess.get_inputs()}
        last, pooled = sess.run(None, feed)
        with torch.no_grad():
            o = sb(enc["input_ids"], enc["attention_mask"], subnet=cfg)
        valid = enc["attention_mask"].bool().numpy()
        assert np.abs(last - o.last_hidden_state.numpy())[valid].max() <= 1e-4, cfg
        assert np.abs(pooled - o.pooler_output.numpy()).max() <= 1e-4, cfg
