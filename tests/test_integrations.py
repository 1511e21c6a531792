"""pyvene interventions and the TransformerLens hook, each skipped where its framework is absent."""

from __future__ import annotations

import pytest
import torch

from steerkern import reference
from steerkern.dictionary import ConceptDictionary
from steerkern.hooks import Steerer
from steerkern.integrations.transformer_lens import SteeringHook, resid_post
from tests.tiny_models import random_batch, tiny_gemma2

LAYER = 1


@pytest.fixture(scope="module")
def gemma():
    return tiny_gemma2()


@pytest.fixture(scope="module")
def rows(gemma):
    generator = torch.Generator().manual_seed(2)
    return torch.randn(7, gemma.config.hidden_size, generator=generator)


def pyvene_generate(pyvene, model, intervention, batch, subspaces=None):
    intervenable = pyvene.IntervenableModel(
        {"component": f"model.layers[{LAYER}].output", "intervention": intervention}, model=model
    )
    with torch.no_grad():
        _, generations = intervenable.generate(
            batch, unit_locations=None, intervene_on_prompt=True, subspaces=subspaces, max_new_tokens=6, do_sample=False
        )
    return generations


def test_pyvene_fused_addition_generates_as_pyvene_addition(gemma, rows):
    pyvene = pytest.importorskip("pyvene")
    from steerkern.integrations.pyvene import FusedAdditionIntervention

    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    mag, max_act = 1.5, 2.0
    subspaces = [
        {
            "idx": torch.tensor([2, 2, 2]),
            "mag": torch.full((3,), mag),
            "max_act": torch.full((3,), max_act),
            "prefix_length": 1,
        }
    ]
    fused = pyvene_generate(pyvene, gemma, FusedAdditionIntervention.from_dictionary(rows), batch, subspaces)
    plain = pyvene.AdditionIntervention(
        embed_dim=gemma.config.hidden_size, source_representation=mag * max_act * rows[2]
    )
    expected = pyvene_generate(pyvene, gemma, plain, batch)
    assert torch.equal(fused, expected)
    with torch.no_grad():
        assert not torch.equal(fused, gemma.generate(**batch, max_new_tokens=6, do_sample=False))


def test_pyvene_interventions_generate_as_the_steerer(gemma, rows):
    pyvene = pytest.importorskip("pyvene")
    from steerkern.integrations.pyvene import FusedAdditionIntervention, FusedSubspaceIntervention

    max_act = torch.rand(len(rows)) + 0.5
    dictionary = ConceptDictionary(rows, max_act=max_act)
    steerer = Steerer(gemma, dictionary, layers=[LAYER])
    idx, mag = torch.tensor([1, 4, 6]), torch.tensor([2.0, -1.0, 3.0])
    cases = ((FusedAdditionIntervention, "add", 0, "left"), (FusedSubspaceIntervention, "clamp", 2, None))
    for intervention, mode, prefix_length, padding in cases:
        # AxBench counts the prefix from the first column: compare clamping on an unpadded batch.
        batch = random_batch([5, 8, 3] if padding else [6, 6, 6], gemma.config.vocab_size)
        subspaces = [{"idx": idx, "mag": mag, "max_act": max_act[idx], "prefix_length": prefix_length}]
        fused = pyvene_generate(pyvene, gemma, intervention.from_dictionary(dictionary), batch, subspaces)
        steering = steerer.steer(idx[:, None].tolist(), mag[:, None].tolist(), mode=mode, prefix_length=prefix_length)
        with steering, torch.no_grad():
            expected = gemma.generate(**batch, max_new_tokens=6, do_sample=False)
        assert torch.equal(fused, expected)


def test_transformer_lens_hook_steers_in_place_after_the_prefix_of_a_prompt_pass(rows):
    dictionary = ConceptDictionary(rows, max_act=torch.full((len(rows),), 2.0))
    hook = SteeringHook(dictionary, concepts=[[3], [5, 1]], factors=[[1.0], [0.5, -1.0]], prefix_length=2)
    ids = torch.tensor([[3, -1], [5, 1]])
    coeffs = torch.tensor([[2.0, 0.0], [1.0, -2.0]])
    for length, steered_from in ((6, 2), (1, 0)):  # a prompt pass, then one decode step
        activation = torch.randn(2, length, rows.shape[1])
        mask = (torch.arange(length) >= steered_from).expand(2, length)
        expected, _ = reference.steer(activation, rows, ids, coeffs, mask=mask)
        result = hook(activation, hook=None)
        assert result is activation
        torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    assert resid_post(10) == "blocks.10.hook_resid_post"


def test_transformer_lens_hook_runs_under_hooked_root_module(rows):
    transformer_lens = pytest.importorskip("transformer_lens")
    from transformer_lens.hook_points import HookPoint

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hook_resid_post = HookPoint()

        def forward(self, residual):
            return self.hook_resid_post(residual * 1.5)

    class TinyLens(transformer_lens.HookedRootModule):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])
            self.setup()

        def forward(self, residual):
            for block in self.blocks:
                residual = block(residual)
            return residual

    model = TinyLens()
    residual = torch.randn(2, 4, rows.shape[1])
    hook = SteeringHook(rows, concepts=[2], factors=[3.0])
    with model.hooks(fwd_hooks=[(resid_post(0), hook)]):
        steered = model(residual)
    torch.testing.assert_close(steered, (residual * 1.5 + 3.0 * rows[2]) * 1.5)
