"""Distillation (edgeprune.recovery.distill): pruned models are trainable, runs are deterministic for a seed, a resumed run
equals an uninterrupted one, the certify split is never read, masked and gradual students."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgeprune.adapters import get_adapter  # noqa: E402
from edgeprune.task.data import TextDataset  # noqa: E402
from edgeprune.recovery.distill import (DistillConfig, distill_, distill_loss, hidden_loss,  # noqa: E402
                                        make_trainable_, task_distill_data, teacher_logits, teacher_targets)
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.task.modeling import clone_model, prune_and_verify_  # noqa: E402
from edgeprune.plan import HeadPlan  # noqa: E402
from test_recovery import BS, H, JOINT, L, NB, dataset, tiny_model, tok  # noqa: E402,F401

CFG = DistillConfig(epochs=2, batch_size=8, max_length=16, lr=1e-3)
MILD = HeadPlan((H,) * L, ((0, 1, 2), (0, 1, 3), (0, 1, 2, 3), (1, 2, 3))).with_ffn(
    BS, (NB,) * L, ((0, 1, 2, 3, 5), (1, 2, 3), (0, 1, 2), (0, 1, 2, 3, 4, 5, 6)))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _kl(student, teacher, tok, data):
    t = teacher_logits(teacher, tok, data, max_length=16)
    s = teacher_logits(student, tok, data, max_length=16)
    return float(distill_loss(s, t, None, 2.0, 0.0))


def _pruned(model_type="bert", plan=JOINT):
    model = tiny_model(model_type)
    student = clone_model(model)
    prune_and_verify_(student, plan)
    return model, student


def test_pruned_model_is_trainable(tok):
    teacher, student = _pruned()
    assert not any(p.is_inference() for p in student.parameters())
    assert all(p.requires_grad for p in student.parameters())
    before = _state(student)
    res = distill_(student, teacher, tok, dataset(), DistillConfig(max_steps=2, batch_size=8, max_length=16))
    assert res.steps == 2 and not _same(before, _state(student))


def test_inference_mode_surgery_is_made_trainable(tok):
    """Surgery under inference_mode (as prune_and_verify_ used to run) leaves inference tensors that cannot train;
    distill_ converts them (make_trainable_)."""
    teacher = tiny_model("roberta")
    student = clone_model(teacher)
    with torch.inference_mode():
        get_adapter(student).prune_heads_(student, JOINT)
    sliced = get_adapter(student).attention_output(student, 0).weight
    assert sliced.is_inference()
    enc = tok(["good movie"], return_tensors="pt")
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        student(input_ids=enc["input_ids"]).logits.sum().backward()
        torch.optim.AdamW(student.parameters()).step()
    res = distill_(student, teacher, tok, dataset(), DistillConfig(max_steps=2, batch_size=8, max_length=16))
    assert res.steps == 2 and not any(p.is_inference() for p in student.parameters())
    assert make_trainable_(student) is student


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_distillation_moves_the_student_toward_the_teacher(tok, model_type):
    teacher, student = _pruned(model_type)
    data = dataset(64)
    before = _kl(student, teacher, tok, data)
    res = distill_(student, teacher, tok, data, DistillConfig(epochs=4, batch_size=8, max_length=16, lr=3e-3,
                                                               ce_weight=0.0))
    assert res.epochs_done == 4 and res.stopped_by == "epochs" and len(res.losses) == 4
    assert _kl(student, teacher, tok, data) < 0.7 * before
    assert not student.training


def test_deterministic_for_a_seed(tok):
    teacher, s1 = _pruned()
    s2, s3 = clone_model(s1), clone_model(s1)
    r1 = distill_(s1, teacher, tok, dataset(), CFG)
    r2 = distill_(s2, teacher, tok, dataset(), CFG)
    distill_(s3, teacher, tok, dataset(), DistillConfig(**{**CFG.to_dict(), "seed": 1}))
    assert _same(_state(s1), _state(s2)) and r1.losses == r2.losses
    assert not _same(_state(s1), _state(s3))


class _Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted(tok, tmp_path):
    teacher, s1 = _pruned()
    s2 = clone_model(s1)
    cfg = DistillConfig(**{**CFG.to_dict(), "checkpoint_every": 3})
    ref = distill_(s1, teacher, tok, dataset(), cfg)

    def kill(info):
        if info["step"] == 7:  # 12 steps per epoch: dies mid-epoch, after the step-6 checkpoint
            raise _Interrupt

    with pytest.raises(_Interrupt):
        distill_(s2, teacher, tok, dataset(), cfg, checkpoint_dir=tmp_path, progress=kill)
    s3 = clone_model(s2)  # holds step-7 weights: only the step-6 checkpoint may decide where training resumes
    got = distill_(s3, None, tok, dataset(), cfg, checkpoint_dir=tmp_path)
    assert got.resumed_from_step == 6 and got.steps == ref.steps and got.teacher_seconds == 0.0
    assert _same(_state(s1), _state(s3)) and got.losses == pytest.approx(ref.losses)
    # finished: a rerun does nothing
    again = distill_(s3, None, tok, dataset(), cfg, checkpoint_dir=tmp_path)
    assert again.resumed_from_step == ref.steps and _same(_state(s1), _state(s3))
    # another config or other data refuses the folder
    with pytest.raises(EdgepruneError, match="another distillation run"):
        distill_(s3, teacher, tok, dataset(), DistillConfig(**{**cfg.to_dict(), "lr": 5e-4}), checkpoint_dir=tmp_path)
    with pytest.raises(EdgepruneError, match="another distillation run"):
        distill_(s3, teacher, tok, dataset(seed=9), cfg, checkpoint_dir=tmp_path)


def test_budgets(tok, tmp_path):
    teacher, s = _pruned()
    r = distill_(s, teacher, tok, dataset(), DistillConfig(**{**CFG.to_dict(), "max_steps": 5}),
                 checkpoint_dir=tmp_path)
    assert r.steps == 5 and r.stopped_by == "max_steps"
    r = distill_(s, None, tok, dataset(), DistillConfig(**{**CFG.to_dict(), "max_steps": 9}), checkpoint_dir=tmp_path)
    assert r.resumed_from_step == 5 and r.steps == 9
    r = distill_(clone_model(s), teacher, tok, dataset(), DistillConfig(**{**CFG.to_dict(), "max_seconds": 0.0}))
    assert r.steps == 1 and r.stopped_by == "max_seconds"


class _Poisoned:
    """A split whose every access raises."""

    def __getattr__(self, name):
        raise AssertionError(f"the certify split was read ({name})")

    def __len__(self):
        raise AssertionError("the certify split was read (len)")

    def __iter__(self):
        raise AssertionError("the certify split was read (iter)")


class _Task:
    def __init__(self, finetune, search):
        self.finetune, self.search = finetune, search

    @property
    def certify(self):
        raise AssertionError("the certify split was read")

    @property
    def splits(self):
        raise AssertionError("the splits dict (with the certify split) was read")

    @property
    def data(self):
        return _Poisoned()


def test_never_reads_the_certify_split(tok, tmp_path):
    ft, se = dataset(40, seed=1), dataset(24, seed=2)
    data = task_distill_data(_Task(ft, se))
    assert data.texts == ft.texts + se.texts and data.labels == ft.labels + se.labels
    teacher, s = _pruned()
    res = distill_(s, teacher, tok, data, DistillConfig(max_steps=3, batch_size=8, max_length=16),
                   checkpoint_dir=tmp_path)
    assert res.examples == 64


def test_unlabelled_texts_train_on_kl_only(tok):
    teacher, s = _pruned()
    texts = dataset(32).texts
    res = distill_(s, teacher, tok, texts, DistillConfig(max_steps=3, batch_size=8, max_length=16))
    assert res.steps == 3
    y = torch.tensor([0, 1])
    logit = torch.tensor([[1.0, -1.0], [0.5, 0.2]])
    assert float(distill_loss(logit, logit, None, 2.0, 0.5)) == pytest.approx(0.0, abs=1e-7)
    assert float(distill_loss(logit, logit, y, 2.0, 0.5)) > 0


def test_masked_student(tok):
    """An unpruned student trained under a plan's masks: the removed units get no gradient, so pruning it
    afterwards is exact."""
    teacher = tiny_model("bert")
    student = clone_model(teacher)
    ad = get_adapter(student)
    q0 = ad.layers(student)[1].attention.self.query.weight.detach().clone()
    distill_(student, teacher, tok, dataset(), DistillConfig(max_steps=4, batch_size=8, max_length=16,
                                                               weight_decay=0.0), plan=JOINT)
    q1 = ad.layers(student)[1].attention.self.query.weight.detach()
    d = q0.shape[1] // H  # head size; layer 1 keeps only head 1
    gone = [h for h in range(H) if h not in JOINT.kept[1]]
    for h in gone:
        assert torch.equal(q0[h * d:(h + 1) * d], q1[h * d:(h + 1) * d])
    assert not torch.equal(q0[d:2 * d], q1[d:2 * d])  # the kept head trained
    prune_and_verify_(student, JOINT)




# ---- the layer-wise hidden-state term -----------------------------------------------------------------------------
def _hidden_error(student, teacher, tok, data):
    """The hidden-state term of the student against the teacher on ``data`` (eval mode)."""
    _, cache = teacher_targets(teacher, tok, data, max_length=16, hidden=True)
    enc = tok(list(data.texts), truncation=True, max_length=16, padding=True, return_tensors="pt")
    student.eval()
    with torch.no_grad():
        hs = student(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                     output_hidden_states=True).hidden_states
    return float(hidden_loss(hs, cache.batch(list(range(len(data))), enc["attention_mask"]), enc["attention_mask"]))


def test_hidden_cache_is_the_teachers_unpadded_states(tok):
    teacher = tiny_model("bert")
    data = dataset(20)
    logits, cache = teacher_targets(teacher, tok, data, max_length=16, hidden=True)
    assert torch.allclose(logits, teacher_logits(teacher, tok, data, max_length=16))
    assert cache.layers == teacher.config.num_hidden_layers and cache.states.dtype == torch.float16
    # text 3 alone (no padding) gives the same states as its slice of the padded batches
    enc = tok([data.texts[3]], truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        alone = torch.stack(teacher(**enc, output_hidden_states=True).hidden_states, 0)[:, 0]
    lo, hi = int(cache.offsets[3]), int(cache.offsets[4])
    assert hi - lo == enc["input_ids"].shape[1]
    assert torch.allclose(cache.states[lo:hi].transpose(0, 1).float(), alone, atol=2e-3)
    # a batch is scattered to the real tokens of either padding side
    mask = torch.tensor([[0, 0] + [1] * (hi - lo)])
    left = cache.batch([3], mask)
    assert torch.equal(left[:, 0, 2:], cache.states[lo:hi].transpose(0, 1).float()) and not left[:, 0, :2].any()
    with pytest.raises(Exception, match="tokens now"):
        cache.batch([3], torch.ones(1, hi - lo + 1, dtype=torch.long))


def test_hidden_loss_is_zero_only_for_the_teacher_and_maps_fewer_layers(tok):
    teacher = tiny_model("bert")
    data = dataset(16)
    assert _hidden_error(teacher, teacher, tok, data) < 1e-5
    _, student = _pruned()
    assert _hidden_error(student, teacher, tok, data) > 1e-3
    # a 2-layer student is matched to teacher layers round(j * L / 2)
    short = clone_model(teacher)
    get_adapter(short).keep_layers_(short, [0, 1])
    assert short.config.num_hidden_layers == 2 < teacher.config.num_hidden_layers
    assert _hidden_error(short, teacher, tok, data) > 1e-3


def test_hidden_distillation_moves_the_states_toward_the_teachers(tok):
    teacher, s_kl = _pruned()
    s_hid = clone_model(s_kl)
    data = dataset(64)
    cfg = DistillConfig(epochs=3, batch_size=8, max_length=16, lr=3e-3, ce_weight=0.0)
    before = _hidden_error(s_kl, teacher, tok, data)
    distill_(s_kl, teacher, tok, data, cfg)
    res = distill_(s_hid, teacher, tok, data, DistillConfig(**{**cfg.to_dict(), "hidden_weight": 1.0}))
    assert res.teacher_seconds > 0 and res.epochs_done == 3
    after_kl, after_hid = _hidden_error(s_kl, teacher, tok, data), _hidden_error(s_hid, teacher, tok, data)
    assert after_hid < 0.7 * before and after_hid < after_kl
    assert _kl(s_hid, teacher, tok, data) < _kl(_pruned()[1], teacher, tok, data)


def test_hidden_distillation_resumes_exactly(tok, tmp_path):
    teacher, s1 = _pruned()
    s2 = clone_model(s1)
    cfg = DistillConfig(**{**CFG.to_dict(), "checkpoint_every": 3, "hidden_weight": 0.5})
    distill_(s1, teacher, tok, dataset(), cfg)

    def kill(info):
        if info["step"] == 7:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        distill_(s2, teacher, tok, dataset(), cfg, checkpoint_dir=tmp_path, progress=kill)
    with pytest.raises(Exception, match="needs a teacher"):  # the hidden states are not in the checkpoint
        distill_(clone_model(s2), None, tok, dataset(), cfg, checkpoint_dir=tmp_path)
    got = distill_(s2, teacher, tok, dataset(), cfg, checkpoint_dir=tmp_path)
    assert got.resumed_from_step == 6 and _same(_state(s1), _state(s2))


# ---- quantization-aware distillation ------------------------------------------------------------------------------
def test_straight_through_int8_simulation_keeps_values_and_passes_gradients():
    from edgeprune.recovery.refit import simulate_int8

    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    with simulate_int8([lin]):
        plain = lin(x)
    with simulate_int8([lin], ste=True):
        ste = lin(x)
    assert torch.equal(plain, ste) and not torch.allclose(ste, lin(x), atol=1e-6)
    ste.sum().backward()
    # straight through: d/dx = W_q^T 1 with the quantized weight, d/dW = 1^T q(x) ~ x
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert lin.weight.grad is not None and torch.allclose(lin.weight.grad, x.detach().sum(0).expand(4, 8), atol=0.05)


def test_int8_aware_distillation_trains_the_float_weights(tok):
    from edgeprune.recovery.refit import simulate_int8

    teacher, s_fp = _pruned()
    s_q = clone_model(s_fp)
    data = dataset(64)
    cfg = DistillConfig(epochs=3, batch_size=8, max_length=16, lr=3e-3, ce_weight=0.0)

    def q_kl(student):
        with simulate_int8([student]):
            return _kl(student, teacher, tok, data)

    before = q_kl(s_q)
    res = distill_(s_q, teacher, tok, data, DistillConfig(**{**cfg.to_dict(), "int8_aware": True}))
    assert res.epochs_done == 3 and q_kl(s_q) < 0.7 * before
    assert all(not p.is_inference() and p.dtype == torch.float32 for p in s_q.parameters())
    # the simulation is gone after training: a plain forward is the float model's again
    enc = tok(["good movie"], return_tensors="pt")
    with torch.no_grad():
        a = s_q(**enc).logits
        with simulate_int8([s_q]):
            b = s_q(**enc).logits
    assert not torch.equal(a, b)
