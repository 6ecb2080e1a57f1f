import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from autodistil import ops
from autodistil.nn import SuperBert, SuperBertConfig, depth_map
from autodistil.space import SubnetConfig, teacher_space
from autodistil.ops.shared import grad_mode_ctx
from conftest import randomize_


def test_teacher_shaped_subnet_reproduces_teacher(real_teacher, sentences):
    teacher, tok, info = real_teacher
    space = teacher_space(info.shape)
    sb = SuperBert(SuperBertConfig.for_spaces(space)).eval()
    sb.load_from_teacher(teacher.state_dict())
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        t = teacher(**enc, output_attentions=True)
        s = sb(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], output_attentions=True)
        s_fast = sb(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])  # SDPA path
    valid = enc["attention_mask"].bool()  # padded positions carry no meaning
    assert (t.last_hidden_state - s.last_hidden_state)[valid].abs().max() <= 1e-5
    assert (t.last_hidden_state - s_fast.last_hidden_state)[valid].abs().max() <= 1e-5
    assert (t.pooler_output - s.pooler_output).abs().max() <= 1e-5
    assert (t.attentions[-1] - s.attentions[-1]).abs().max() <= 1e-5


def test_depth_mapping():
    assert depth_map(12, 12) == list(range(12))
    assert depth_map(4, 7) == [0, 1, 3, 5]
    assert depth_map(6, 12) == [0, 2, 4, 6, 8, 10]
    assert depth_map(3, 7, "first") == [0, 1, 2]
    with pytest.raises(ValueError, match="depth mapping 'odd' is not allowed"):
        depth_map(3, 7, "odd")


def test_subnet_outside_supernet_is_refused():
    sb = SuperBert(SuperBertConfig(layers=2, hidden=32, heads=2, ffn=64, head_dim=16, vocab_size=100))
    with pytest.raises(ValueError, match="hidden=48 exceeds the supernet's maximum 32"):
        sb.set_subnet(SubnetConfig(1, 48, 1.0, 1))
    with pytest.raises(ValueError, match="ffn width=96 exceeds the supernet's maximum 64"):
        sb.set_subnet(SubnetConfig(1, 32, 3.0, 1))
    with pytest.raises(ValueError, match="input_ids must be"):
        sb(torch.ones(3, dtype=torch.long))


def test_outputs_have_subnet_shapes(small_space):
    sb = SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=500))
    cfg = SubnetConfig(2, 48, 2.5, 3)
    ids = torch.randint(0, 500, (2, 7))
    with sb.subnet(cfg):
        o = sb(ids, torch.ones_like(ids), output_hidden_states=True, output_qkv=True, output_attentions=True)
    assert o.last_hidden_state.shape == (2, 7, 48) and len(o.hidden_states) == 3
    assert o.qkv[-1][0].shape == (2, 7, 3 * 16) and o.attentions[0].shape == (2, 3, 7, 7)
    assert sb.active == small_space.largest()  # context manager restored


_COPY_OPS = {"aten.clone.default", "aten._to_copy.default", "aten.copy_.default", "aten.contiguous.default"}


class _Watch(TorchDispatchMode):
    """Records copies whose source is a parameter's storage, and every op output shape."""

    def __init__(self, params):
        super().__init__()
        self.ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.copies, self.shapes = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        srcs = [a for a in args if isinstance(a, torch.Tensor)]
        if name in _COPY_OPS:
            src = srcs[-1] if name == "aten.copy_.default" else srcs[0]
            if src.untyped_storage().data_ptr() in self.ptrs:
                self.copies.append((name, tuple(src.shape)))
        out = func(*args, **kwargs)
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor):
                self.shapes.append(tuple(o.shape))
        return out


def _train_step(sb, cfg, ids):
    with sb.subnet(cfg):
        o = sb(ids, torch.ones_like(ids), output_qkv=True)
    return o.last_hidden_state.pow(2).mean() + o.pooler_output.sum()


def test_forward_never_copies_a_weight_slice(small_space):
    sb = randomize_(SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=500)))
    ids = torch.randint(0, 500, (2, 5))
    with _Watch(list(sb.parameters())) as w:
        _train_step(sb, SubnetConfig(2, 48, 2.5, 3), ids)
    assert w.copies == []
    # the watch does see a materialised slice (so the assertion above can fail)
    with _Watch(list(sb.parameters())) as w2:
        sb.encoder.layer[0].intermediate.dense.weight[:100, :48].contiguous()
    assert w2.copies


def test_inplace_grads_equal_autograd_and_skip_full_size_temporaries(small_space):
    torch.manual_seed(0)
    sb = randomize_(SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=500)))
    ids = torch.randint(0, 500, (2, 5))
    members = [SubnetConfig(2, 48, 2.5, 3), SubnetConfig(1, 32, 2.0, 2), SubnetConfig(3, 64, 3.0, 4)]
    full_shapes = {tuple(p.shape) for p in sb.parameters()}  # 2-D weights and 1-D biases / LayerNorm

    def grads(mode):
        sb.zero_grad(set_to_none=True)
        with grad_mode_ctx(mode):
            for cfg in members:  # sandwich-style accumulation
                _train_step(sb, cfg, ids).backward()
        return {n: p.grad.clone() for n, p in sb.named_parameters() if p.grad is not None}

    g_auto, g_inp = grads("autograd"), grads("inplace")
    assert set(g_auto) == set(g_inp)
    for n in g_auto:
        torch.testing.assert_close(g_inp[n], g_auto[n], rtol=1e-5, atol=1e-6, msg=n)

    def backward_shapes(mode):  # grads already allocated: only per-step temporaries remain
        with grad_mode_ctx(mode):
            loss = _train_step(sb, members[0], ids)
            with _Watch([]) as w:
                loss.backward()
        return {s for s in w.shapes if s in full_shapes}

    assert backward_shapes("inplace") == set()
    # autograd delivery hands full-size gradients to autograd, 1-D ones included
    assert {len(s) for s in backward_shapes("autograd")} == {1, 2}


def _grad_fn_names(t) -> set:
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        names.add(type(f).__name__)
        todo.extend(g for g, _ in f.next_functions)
    return names


@pytest.mark.parametrize("amp", [False, True])
def test_fused_layer_ops_match_the_module_calls_and_respect_hooks(small_space, amp):
    """In training the layer runs q/k/v as one autograd Function, the attention output projection +
    residual + LayerNorm as one and the whole FFN block as one (host time per op is what a GPU step
    waits on); its loss equals the module-by-module path's and every gradient is within an ulp-level
    tolerance of it (q/k/v's dX is summed before the residual's gradient), which a hook on any of those
    modules selects (DeepSpeed ZeRO-3 gathers parameters in forward pre-hooks; rewire reads forward
    hooks), so the hook fires."""
    torch.manual_seed(0)
    sb = randomize_(SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=500)))
    ids = torch.randint(0, 500, (2, 5))
    cfg = SubnetConfig(2, 48, 2.5, 3)

    def run(hook):
        sb.zero_grad(set_to_none=True)
        calls, handles = [], []
        if hook:
            for layer in sb.encoder.layer:
                for m in (layer.attention.self.key, layer.attention.output.dense, layer.output.LayerNorm):
                    handles.append(m.register_forward_hook(lambda *a: calls.append(1)))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = sb(ids, subnet=cfg, output_qkv=True)
            loss = out.last_hidden_state.float().pow(2).mean() + sum(
                t.float().pow(2).mean() for qkv in out.qkv for t in qkv
            )
        names = _grad_fn_names(loss)
        loss.backward()
        for h in handles:
            h.remove()
        return (
            loss.detach(),
            {n: p.grad.clone() for n, p in sb.named_parameters() if p.grad is not None},
            names,
            calls,
        )

    fused, parts = run(False), run(True)
    fused_fns = ("SlicedQKVBackward", "SlicedLinearLayerNormBackward", "SlicedFFNLayerNormBackward")
    assert all(any(n.startswith(f) for n in fused[2]) for f in fused_fns), fused[2]
    assert not any(n.startswith(fused_fns) for n in parts[2]), "a hooked module was bypassed"
    assert len(parts[3]) == 3 * 2, "the hooks did not fire once per module and layer"
    assert torch.equal(fused[0], parts[0])
    assert set(fused[1]) == set(parts[1])
    for n, g in parts[1].items():  # dX of q/k/v is summed before, not after, the residual's gradient
        torch.testing.assert_close(fused[1][n], g, rtol=1e-5, atol=1e-7, msg=n)


def test_fused_path_keeps_container_hooks_and_foreign_modules(small_space):
    """A hook on a block's container module (layer.output, whose forward the module path calls) still
    fires, a module
    replaced by another class (a wrapper, a LoRA linear) or a patched forward is still called, and
    dropout switched on in a module takes the module path even when the model is in eval mode."""
    torch.manual_seed(0)
    sb = randomize_(SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=500)))
    ids = torch.randint(0, 500, (2, 5))
    cfg = SubnetConfig(2, 48, 2.5, 3)
    layer = sb.encoder.layer[sb.layer_indices(cfg)[0]]
    calls = []
    layer.output.register_forward_hook(lambda *a: calls.append("_Out"))
    sb(ids, subnet=cfg)
    assert calls == ["_Out"], calls

    class Counting(type(layer.attention.self.query)):
        def forward(self, *a, **k):
            calls.append("query")
            return super().forward(*a, **k)

    q = layer.attention.self.query
    swapped = Counting(q.in_features, q.out_features)
    swapped.load_state_dict(q.state_dict())
    layer.attention.self.query = swapped
    calls.clear()
    sb(ids, subnet=cfg)
    assert "query" in calls, "a module of another class was bypassed by the fused q/k/v"
    layer.attention.output.dense.forward = lambda *a, **k: (
        calls.append("patched")
        or type(layer.attention.output.dense).forward(layer.attention.output.dense, *a, **k)
    )
    sb(ids, subnet=cfg)
    assert "patched" in calls, "a patched forward was bypassed"
    del layer.attention.output.dense.forward
    calls.clear()
    hook = layer.intermediate.dense.register_forward_hook(lambda *a: calls.append("ffn-in"))  # as rewire's
    sb(ids, subnet=cfg)
    hook.remove()
    assert "ffn-in" in calls, calls
    sb.eval()
    for lay in sb.encoder.layer:
        for d in (lay.output.dropout, lay.attention.output.dropout):
            d.p = 0.5
            d.train()
    names = _grad_fn_names(sb(ids, subnet=cfg).last_hidden_state)
    assert "NativeDropoutBackward0" in names or "MulBackward0" in names, names
    assert not {"SlicedFFNLayerNormBackward", "SlicedLinearLayerNormBackward"} & names, names
    for lay in sb.encoder.layer:  # a module without p (dropout stripped by nn.Identity): the module path
        lay.output.dropout = torch.nn.Identity()
    sb.train()
    assert "SlicedFFNLayerNormBackward" not in _grad_fn_names(sb(ids, subnet=cfg).last_hidden_state)


def test_backend_dispatch_errors():
    with pytest.raises(ValueError, match="backend 'tpu' is not allowed"):
        with ops.use_backend("tpu"):
            pass
    x, w = torch.randn(3, 5), torch.randn(8, 6)
    with pytest.raises(ValueError, match="sliced_linear: x has last dim 5, expected in_features=4"):
        ops.sliced_linear(x, w, None, 4, 4)
    with pytest.raises(ValueError, match=r"slice \(9, 5\) is outside weight of shape \(8, 6\)"):
        ops.sliced_linear(x, w, None, 9, 5)
    with pytest.raises(ValueError, match="key_mask must be"):
        ops.sliced_attention(*(torch.randn(1, 2, 3, 4),) * 3, key_mask=torch.ones(1, 4))


def test_backend_context_restores_and_stays_in_its_thread():
    import threading

    assert ops.get_backend() == "torch"
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with ops.use_backend("triton" if ops.backend_status()["triton"] == "ok" else "torch"):
            inner = ops.get_backend()
            t = threading.Thread(target=lambda: seen.append(ops.get_backend()))
            t.start()
            t.join()
            raise RuntimeError("boom")
    assert ops.get_backend() == "torch"
    assert seen == ["torch"]  # another thread never sees this context's backend
    assert inner in ("triton", "torch")


def test_attention_dispatch_routes_dropout_and_differentiable_probs_to_the_reference(monkeypatch):
    from autodistil.ops import torch_backend

    calls = []
    real = torch_backend.attention
    monkeypatch.setattr(torch_backend, "attention", lambda *a: calls.append(a[4:]) or real(*a))
    q, k, v = (torch.randn(1, 2, 5, 8, requires_grad=True) for _ in range(3))
    ops.sliced_attention(q, k, v, None, need_probs=True)  # probabilities with gradient
    ops.sliced_attention(q, k, v, None, need_probs=False, dropout_p=0.1)
    assert calls == []
    with torch.no_grad():
        ops.sliced_attention(q, k, v, None, need_probs=True)
    ops.sliced_attention(q, k, v, None, need_probs=False)
    assert calls == [(True, 0.0), (False, 0.0)]


@pytest.mark.parametrize("need_probs", [False, True])  # SDPA path, probabilities path
def test_all_padding_sequence_gives_zero_context_probs_and_grads(need_probs):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1] = 0  # the second sequence is all padding
    ctx, probs = ops.sliced_attention(q, k, v, mask, need_probs=need_probs)
    (ctx.pow(2).sum() + (probs.pow(2).sum() if need_probs else 0)).backward()
    assert torch.equal(ctx[1], torch.zeros_like(ctx[1]))
    for t in (q, k, v):
        assert torch.equal(t.grad[1], torch.zeros_like(t.grad[1]))
        assert t.grad[0].abs().sum() > 0
    if need_probs:
        assert torch.equal(probs[1], torch.zeros_like(probs[1]))
        torch.testing.assert_close(probs[0].sum(-1), torch.ones(3, 5))
    ref = torch.nn.functional.scaled_dot_product_attention(q[:1], k[:1], v[:1])
    torch.testing.assert_close(ctx[:1], ref)
