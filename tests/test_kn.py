"""KN: integrated gradients find a neuron built to drive the answer; the edit touches only chosen neurons."""

import pytest
import torch

from editharm.methods import kn
from editharm.methods.base import EditContext
from editharm.methods.ft import split_prompt_target
from editharm.models import layout_for, random_model
from editharm.requests import EditRequest

REQUEST = EditRequest(case_id="0", subject="Paris", prompt="{} is the capital of", target_new="Rome",
                      target_true="France", paraphrases=("The city of Paris is the capital of",))
LAYER, NEURON = 1, 7


def _tiny(family):
    model, tok = random_model(family, seed=0, hidden=32, layers=2, heads=2)
    return model, tok, EditContext(layout=layout_for(model), covariance=lambda layer: None)


@torch.no_grad()
def _plant_neuron(model, tok, layout, prompt, token):
    """Make neuron NEURON of layer LAYER fire on the prompt's last token and write `token`'s unembedding.

    Without a norm after the MLP (llama, gpt2) the neuron's write dominates the MLP output. With
    Gemma's post-feed-forward RMSNorm the layer's output length is fixed, so only the direction the
    neurons give it matters: the neuron writes as much as the rest of the MLP together, and growing
    it turns the normalised output toward the answer (a neuron owning the whole output could not
    turn it further, and the scaling path of integrated gradients would see nothing; see
    test_attributions_of_a_post_normed_layer_sum_to_zero).
    """
    mlp_in, down_out = {}, {}
    up = model.get_submodule(layout.mlp_up.format(LAYER))
    down = model.get_submodule(layout.mlp_down.format(LAYER))
    if layout.post_mlp_norm is not None:
        # A trained Gemma's MLP writes O(1) per element (down_proj |W| ~ 0.015 over 2048 neurons); the
        # random init writes ~1e-3, where the norm's epsilon (1e-6 on the mean square) still counts.
        # Scaling the whole matrix barely changes the normalised output, only the regime.
        down.weight.mul_(1e3)
    hooks = [up.register_forward_pre_hook(lambda mod, args: mlp_in.__setitem__("x", args[0][0, -1].clone())),
             down.register_forward_hook(lambda mod, args, out: down_out.__setitem__("y", out[0, -1].clone()))]
    model(input_ids=torch.tensor([tok(prompt)["input_ids"]]))
    for hook in hooks:
        hook.remove()
    x = mlp_in["x"] / mlp_in["x"].norm()
    direction = model.get_output_embeddings().weight[token] / model.get_output_embeddings().weight[token].norm()
    if layout.family in ("llama", "gemma3"):              # gated MLPs
        model.get_submodule(f"model.layers.{LAYER}.mlp.gate_proj").weight[NEURON] = 3.0 * x
        up.weight[NEURON] = 3.0 * x                       # activation silu(3|x|)*3|x|, about 9 * |x|
        down.weight[:, NEURON] = 2.0 * direction
    else:                                                 # GPT-2 Conv1D: weights stored [in, out]
        up.weight[:, NEURON] = 3.0 * x
        up.bias[NEURON] = 0.0
        down.weight[NEURON, :] = 2.0 * direction
    if layout.post_mlp_norm is not None:
        # rescale the write to the norm of what the other neurons write (measured before planting)
        acts = {}
        hook = down.register_forward_pre_hook(lambda mod, args: acts.__setitem__("a", args[0][0, -1, NEURON].item()))
        model(input_ids=torch.tensor([tok(prompt)["input_ids"]]))
        hook.remove()
        down.weight[:, NEURON] = direction * down_out["y"].norm() / acts["a"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_planted_neuron_has_the_top_attribution(family):
    model, tok, ctx = _tiny(family)
    prompt = REQUEST.filled_prompt
    prompt_ids, answer_ids = split_prompt_target(tok, prompt, REQUEST.target_true)
    _plant_neuron(model, tok, ctx.layout, prompt, answer_ids[0])
    scores = kn.attribution_scores(model, tok, prompt, answer_ids[:1], prompt_ids, ctx.layout, [0, 1], steps=8, batch_size=5)
    assert scores.shape == (2, ctx.layout.intermediate_size)
    assert divmod(int(scores.argmax()), scores.shape[1]) == (LAYER, NEURON)
    assert kn.coarse_neurons(scores, [0, 1], 0.9) == [(LAYER, NEURON)]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_attributions_of_a_post_normed_layer_sum_to_zero(family):
    """Gemma's RMSNorm after down_proj makes the answer's probability invariant to scaling a layer's whole
    activation vector, the path of the integral (Dai et al., EasyEdit): along it, sum_i w_i dP/dw_i =
    alpha dP/dalpha = 0, so each layer's attributions cancel. Without that norm (llama) the planted
    neuron's layer sums to about P(w) - P(0), its attribution. Zero sums at the down-projection input
    mean KN scales exactly what the norm reads; another site (EasyEdit's gate pre-activation, through
    a nonlinearity) would not cancel in general."""
    model, tok, ctx = _tiny(family)
    prompt = REQUEST.filled_prompt
    prompt_ids, answer_ids = split_prompt_target(tok, prompt, REQUEST.target_true)
    _plant_neuron(model, tok, ctx.layout, prompt, answer_ids[0])
    scores = kn.attribution_scores(model, tok, prompt, answer_ids[:1], prompt_ids, ctx.layout, [0, 1], steps=8, batch_size=5)
    # The planted layer only: the random layer 0 writes about 1e-3 per element, where the norm's
    # epsilon (1e-6 against a mean square of about 1e-6) still breaks the invariance.
    ratio = float(scores[LAYER].sum().abs() / scores[LAYER].abs().sum())
    assert ratio < 1e-3 if family == "gemma3" else ratio > 0.5, ratio


def test_integrated_gradients_match_full_recomputation():
    """The KV-cached one-token rows give the same integral as patching full-sequence forward passes."""
    model, tok, ctx = _tiny("llama")
    ids = torch.tensor([tok(REQUEST.filled_prompt)["input_ids"]])
    target, layer, steps = 70, 1, 4
    fast = kn._integrated_gradients(model, ctx.layout, [layer], ids, target, steps, batch_size=3)[0]
    acts = {}
    down = model.get_submodule(ctx.layout.mlp_down.format(layer))
    hook = down.register_forward_pre_hook(lambda mod, args: acts.__setitem__("w", args[0][0, -1].detach().clone()))
    with torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    total = torch.zeros_like(acts["w"])
    for k in range(1, steps + 1):
        point = (k / steps * acts["w"]).requires_grad_(True)
        hook = down.register_forward_pre_hook(lambda mod, args: (torch.cat([args[0][:, :-1], point[None, None]], 1),))
        prob = model(input_ids=ids).logits[0, -1].softmax(-1)[target]
        hook.remove()
        total += torch.autograd.grad(prob, point)[0]
    torch.testing.assert_close(fast, acts["w"] * total / steps, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_edit_changes_only_the_selected_neurons(family):
    model, tok, ctx = _tiny(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hp = kn.Hparams(steps=4, batch_size=8, adaptive_threshold=0.3, lambda_1=1.0, lambda_2=8.0,
                    use_paraphrases=True, refine=True, p=0.5)
    update = kn.apply(model, tok, [REQUEST], hp, ctx)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # apply leaves the model alone

    neurons = {tuple(n) for n in update.info["neurons"]}
    assert neurons, "no knowledge neurons were selected"
    assert set(update.deltas) == {ctx.layout.down_weight_name(layer) for layer, _ in neurons}
    emb = model.get_input_embeddings().weight
    prompt_ids, new_ids = split_prompt_target(tok, REQUEST.filled_prompt, REQUEST.target_new)
    greedy = kn.greedy_continuation(model, prompt_ids, len(new_ids))
    direction = -1.0 * emb[greedy].sum(0) + 8.0 * emb[new_ids].sum(0)
    for layer in {layer for layer, _ in neurons}:
        name = ctx.layout.down_weight_name(layer)
        delta = ctx.layout.linear_weight(update.deltas[name])                       # [out, in]
        chosen = sorted(i for lj, i in neurons if lj == layer)
        changed = torch.nonzero(delta.abs().sum(0)).flatten().tolist()
        assert changed == chosen
        torch.testing.assert_close(delta[:, chosen], direction[:, None].expand(-1, len(chosen)))
        # adding the update changes those columns and leaves every other element bit-identical
        weight = model.get_parameter(name).detach()
        edited = ctx.layout.linear_weight(weight + update.deltas[name])
        untouched = [i for i in range(delta.shape[1]) if i not in chosen]
        assert torch.equal(edited[:, untouched], ctx.layout.linear_weight(weight)[:, untouched])


def test_refinement_and_scaling():
    per_prompt = [[(0, 1), (1, 2)], [(1, 2), (0, 3)], [(1, 2), (0, 1)]]
    assert kn.refine_neurons(per_prompt, p=0.6, refine=True) == [(0, 1), (1, 2)]
    assert kn.refine_neurons(per_prompt, p=0.6, refine=False) == [(0, 1), (0, 3), (1, 2)]
    values = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    e_old, e_new = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.5])
    scaled = kn.neuron_update(values, e_old, e_new, 1.0, 2.0, scale_to_value_norm=True)
    # each term rescaled to the value vector's norm (5 and 1) before lambda applies
    torch.testing.assert_close(scaled, torch.tensor([[-5.0, 10.0], [-1.0, 2.0]]))


@torch.no_grad()
def _greedy_by_hand(model, ids, n):
    out = []
    for _ in range(n):
        nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        out.append(nxt)
    return out


def test_old_answer_is_the_models_greedy_prediction_not_target_true():
    """EasyEdit subtracts what the model predicts (argmax), each token with coefficient 1."""
    model, tok, ctx = _tiny("llama")
    prompt_ids, new_ids = split_prompt_target(tok, REQUEST.filled_prompt, REQUEST.target_new)
    _, true_ids = split_prompt_target(tok, REQUEST.filled_prompt, REQUEST.target_true)
    greedy = _greedy_by_hand(model, prompt_ids, len(new_ids))
    assert greedy[:len(true_ids)] != true_ids[:len(greedy)]       # the random model does not know the fact
    assert len(new_ids) > 1                                          # byte tokenizer: " Rome" is 5 tokens
    hp = kn.Hparams(steps=4, batch_size=8, adaptive_threshold=0.3, lambda_1=1.0, lambda_2=1.0)
    update = kn.apply(model, tok, [REQUEST], hp, ctx)
    emb = model.get_input_embeddings().weight
    direction = -emb[greedy].sum(0) + emb[new_ids].sum(0)            # EasyEdit: `-= oe` / `+= te` per row
    (layer, neuron), *_ = update.info["neurons"]
    delta = ctx.layout.linear_weight(update.deltas[ctx.layout.down_weight_name(layer)])
    torch.testing.assert_close(delta[:, neuron], direction)
    assert update.info["old_answer_ids"] == greedy


def test_old_answer_follows_the_edited_model():
    """On an already-edited model the old answer is the model's current prediction."""
    model, tok, ctx = _tiny("llama")
    prompt_ids, new_ids = split_prompt_target(tok, REQUEST.filled_prompt, REQUEST.target_new)
    before = kn.greedy_continuation(model, prompt_ids, len(new_ids))
    with torch.no_grad():                               # make the model say " Rome" after the prompt
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.lm_head.out_features))
        model.lm_head.bias[new_ids[0]] = 1e4
    after = kn.greedy_continuation(model, prompt_ids, len(new_ids))
    assert after[0] == new_ids[0] != before[0]
    update = kn.apply(model, tok, [REQUEST], kn.Hparams(steps=2, batch_size=8, adaptive_threshold=0.3), ctx)
    assert update.info["old_answer_ids"] == after


def test_one_token_answer_coefficients():
    """EasyEdit: a one-token new answer subtracts 2 x e(argmax) and adds 1 x e(new); longer ones 1 x each token."""
    emb = torch.randn(10, 4)
    hp = kn.Hparams()
    assert kn.answer_coefficients(hp, 1) == (2.0, 1.0)
    assert kn.answer_coefficients(hp, 3) == (1.0, 1.0)
    torch.testing.assert_close(kn.answer_embedding(emb, [2, 5, 5]), emb[2] + 2 * emb[5])
    values = torch.zeros(1, 4)
    single = kn.neuron_update(values, kn.answer_embedding(emb, [3]), kn.answer_embedding(emb, [7]),
                              *kn.answer_coefficients(hp, 1), scale_to_value_norm=False)
    torch.testing.assert_close(single[0], -2 * emb[3] + emb[7])
    with pytest.raises(ValueError, match="no tokens"):
        kn.answer_embedding(emb, [])


def test_refinement_keeps_strictly_more_than_p_times_the_prompts():
    """count == p * n prompts is dropped, as EasyEdit's and the authors' `count > t`."""
    per_prompt = [[(0, 1), (0, 2)], [(0, 1), (0, 2)], [(0, 1)], []]     # (0,1) in 3 of 4, (0,2) in 2 of 4
    assert kn.refine_neurons(per_prompt, p=0.5, refine=True) == [(0, 1)]   # t = 2: count 2 is not > 2
    assert kn.refine_neurons(per_prompt, p=0.0, refine=True) == [(0, 1), (0, 2)]
    with pytest.raises(ValueError, match=r"p=1.0 must lie in \[0, 1\)"):
        kn.Hparams(p=1.0)
