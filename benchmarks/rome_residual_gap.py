"""How far a ROME update leaves the plain prompt from v* (the residual of issue 8, point 1).

Run it on a checkout before d64f8ee (edit the two /tmp/old paths) to see the pre-fix
gap; on the current code it prints ~0. Paths below are the ones used for docs/bench_rome.md.
"""
import sys, torch
sys.path.insert(0, "/tmp/old/src")
from editharm.methods import load_hparams, rome
from editharm.methods.base import EditContext
from editharm.methods.covariance import load_second_moment
from editharm.methods.values import fill, tokenize_at_subject
from editharm.nethook import capture
from editharm.models import load_model, facts_for
sys.path.insert(0, "/tmp/old/benchmarks")
from bench_rome import counterfact_requests
torch.set_num_threads(1)
model, tok = load_model("/work/bench/smol", device="cpu")
facts = facts_for(model)
hp = load_hparams("/tmp/old/configs/methods/rome/llama.yaml", rome.Hparams)
cov, _ = load_second_moment("/work/bench/cov_l8_20k.safetensors")
ctx = EditContext(facts=facts, covariance=lambda l: cov, seed=0)
name = facts.down_weight_name(hp.layer)
W = facts.linear_weight(model.get_parameter(name).detach()).double()
for req in counterfact_requests("/work/shared/data/counterfact/counterfact_filtered.json", 5):
    edit = rome.compute_rome(model, tok, req, hp, ctx)
    text, a, b = fill("{}", req.prompt, req.subject)
    ids, pos = tokenize_at_subject(tok, text, a, b)
    mod = facts.mlp_down.format(hp.layer)
    with capture(model, [mod], inputs=True, outputs=True) as rec, torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    k0, ref = rec[mod].input[0, pos].double(), rec[mod].output[0, pos].double()
    out = (W + edit.delta.double()) @ k0
    gap = (out - edit.value.double()).norm() / (edit.value.double() - ref).norm()
    print(f"case {req.case_id}: |(W+dW)k0 - v*| / |delta| = {gap:.4f}", flush=True)
