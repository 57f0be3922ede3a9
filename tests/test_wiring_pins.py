"""Pins: for every preset, a tiny model built from a fixed seed gives these logits, loss, counted
all-reduces, cost-model counts and state-dict keys. The values were recorded from the code before
the wiring refactor (issue 11; ladder and fal_ladder from their first version), so any drift in a
wiring's numerics, its collectives or its checkpoint layout fails here. Re-record a pin only for a
deliberate change of that preset, and say so in the commit; a new preset's pin is printed by
``PYTHONPATH=$PWD python tests/test_wiring_pins.py <preset>``."""

import hashlib

import pytest
import torch

from falstudy.models import VARIANTS
from falstudy.parallel.costmodel import allreduce_counts
from test_models import TINY, CountingComm, make  # noqa: E402  (tests/ is on sys.path)

PINS = {  # recorded on main (1b3c810) unless noted
    'baseline': {'sum': 8.934950467119052, 'first': 0.13831637799739838, 'mid': 0.052583493292331696, 'last': 0.026654930785298347, 'loss': 3.3986170291900635, 'counted': [6, 6], 'fwd': 6, 'bwd': 6, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 0, 'keys': '2b39c9b83e742cba'},
    'parallel': {'sum': 8.904481289651073, 'first': -0.026998426765203476, 'mid': 0.027071956545114517, 'last': 0.00711666326969862, 'loss': 3.449347972869873, 'counted': [3, 3], 'fwd': 3, 'bwd': 3, 'blocks': [[1, 1], [1, 1], [1, 1]], 'stack': 0, 'keys': '8625f852768a295a'},
    'fal': {'sum': 7.847096653094923, 'first': -0.04078153148293495, 'mid': 0.00010235525405732915, 'last': -0.03201764449477196, 'loss': 3.4006783962249756, 'counted': [4, 5], 'fwd': 4, 'bwd': 5, 'blocks': [[2, 2], [1, 1], [1, 1]], 'stack': 1, 'keys': 'd7507767980fa7eb'},
    'fal_plus': {'sum': -7.92314886994609, 'first': -0.0015620827907696366, 'mid': -0.05462920293211937, 'last': -0.1080385074019432, 'loss': 3.3930537700653076, 'counted': [6, 6], 'fwd': 6, 'bwd': 6, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 0, 'keys': 'c9a3942dcb450bbc'},
    'fal_plus_f1': {'sum': -19.617516851285473, 'first': -0.0389753095805645, 'mid': -0.15974390506744385, 'last': -0.002103580394759774, 'loss': 3.584479331970215, 'counted': [6, 6], 'fwd': 6, 'bwd': 6, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 0, 'keys': 'c9a3942dcb450bbc'},
    'fal_plus_f3': {'sum': -7.633819571138702, 'first': 0.004222898278385401, 'mid': -0.04057902842760086, 'last': -0.08522835373878479, 'loss': 3.39682936668396, 'counted': [6, 7], 'fwd': 6, 'bwd': 7, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 1, 'keys': 'c9a3942dcb450bbc'},
    'fal_gated': {'sum': 14.648110935930163, 'first': 0.06705326586961746, 'mid': 0.08153869211673737, 'last': -0.07801072299480438, 'loss': 3.428630828857422, 'counted': [4, 6], 'fwd': 4, 'bwd': 6, 'blocks': [[2, 2], [1, 2], [1, 2]], 'stack': 0, 'keys': 'dd2c225f831bb581'},
    'fal_ln_sum': {'sum': -5.782100534659548, 'first': -0.02561270073056221, 'mid': -0.030580488964915276, 'last': -0.04406680911779404, 'loss': 3.445249319076538, 'counted': [4, 6], 'fwd': 4, 'bwd': 6, 'blocks': [[2, 2], [1, 2], [1, 2]], 'stack': 0, 'keys': 'd0eade2525b4d622'},
    'fal_nf_only': {'sum': 7.7071058269939385, 'first': -0.03814193233847618, 'mid': 0.0002516341919545084, 'last': -0.03746125474572182, 'loss': 3.4002163410186768, 'counted': [4, 5], 'fwd': 4, 'bwd': 5, 'blocks': [[2, 2], [1, 1], [1, 1]], 'stack': 1, 'keys': 'd7507767980fa7eb'},
    'fal_per_layer_norm': {'sum': 9.34201332948578, 'first': 0.13501237332820892, 'mid': 0.05035232752561569, 'last': 0.013180697336792946, 'loss': 3.3985207080841064, 'counted': [4, 6], 'fwd': 4, 'bwd': 6, 'blocks': [[2, 2], [1, 2], [1, 2]], 'stack': 0, 'keys': 'fe2023ba40c1653e'},
    'fal_two_ln': {'sum': -7.685596531693591, 'first': 0.0030221964698284864, 'mid': -0.04091515392065048, 'last': -0.08549351245164871, 'loss': 3.3963725566864014, 'counted': [4, 7], 'fwd': 4, 'bwd': 7, 'blocks': [[2, 2], [1, 2], [1, 2]], 'stack': 1, 'keys': 'c9a3942dcb450bbc'},
    'fal_first_block_fal': {'sum': -3.817348933502217, 'first': -0.02786051295697689, 'mid': 0.007532707415521145, 'last': -0.04238365218043327, 'loss': 3.448471784591675, 'counted': [4, 4], 'fwd': 4, 'bwd': 4, 'blocks': [[2, 1], [1, 1], [1, 1]], 'stack': 1, 'keys': 'c200e125d5f33207'},
    'no_attn': {'sum': 7.265373575661215, 'first': -0.054886702448129654, 'mid': -0.07794705778360367, 'last': -0.004384463187307119, 'loss': 3.45991849899292, 'counted': [3, 3], 'fwd': 3, 'bwd': 3, 'blocks': [[1, 1], [1, 1], [1, 1]], 'stack': 0, 'keys': '954a48669a48d906'},
    'no_mlp': {'sum': 12.039375033655233, 'first': 0.13574007153511047, 'mid': 0.041431207209825516, 'last': 0.12035073339939117, 'loss': 3.4498517513275146, 'counted': [3, 3], 'fwd': 3, 'bwd': 3, 'blocks': [[1, 1], [1, 1], [1, 1]], 'stack': 0, 'keys': '13a01cf3528992ed'},
    'llama': {'sum': 2.7053196516935714, 'first': -0.12006047368049622, 'mid': 0.04690838232636452, 'last': -0.04322465509176254, 'loss': 3.4360873699188232, 'counted': [6, 6], 'fwd': 6, 'bwd': 6, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 0, 'keys': 'd32f2afd1060c39d'},
    'llama_parallel': {'sum': 3.594883141166065, 'first': 0.021150706335902214, 'mid': -0.07005631923675537, 'last': -0.26533326506614685, 'loss': 3.3829758167266846, 'counted': [3, 3], 'fwd': 3, 'bwd': 3, 'blocks': [[1, 1], [1, 1], [1, 1]], 'stack': 0, 'keys': '7261e5e05e773694'},
    'llama_fal': {'sum': 3.6433158393847407, 'first': -0.18407471477985382, 'mid': -0.018328765407204628, 'last': -0.09703747928142548, 'loss': 3.3948566913604736, 'counted': [4, 5], 'fwd': 4, 'bwd': 5, 'blocks': [[2, 2], [1, 1], [1, 1]], 'stack': 1, 'keys': '64a2a565b66df5da'},
    'llama_fal_plus': {'sum': 5.5494477324537, 'first': -0.05436618626117706, 'mid': -0.002398982411250472, 'last': -0.13112077116966248, 'loss': 3.3594911098480225, 'counted': [6, 6], 'fwd': 6, 'bwd': 6, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 0, 'keys': '4e13fd718450e935'},
    'post_ln': {'sum': -10.081671126288711, 'first': -0.015018578618764877, 'mid': 0.05768536403775215, 'last': 0.07422547042369843, 'loss': 3.6144473552703857, 'counted': [6, 6], 'fwd': 6, 'bwd': 6, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 0, 'keys': '2b39c9b83e742cba'},
    'residual_gates': {'sum': 6.5916787179303356, 'first': 0.11322799324989319, 'mid': 0.053850751370191574, 'last': -0.0631025955080986, 'loss': 3.437108039855957, 'counted': [6, 6], 'fwd': 6, 'bwd': 6, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 0, 'keys': '2ef5c28441119cfa'},
    'value_residual': {'sum': 8.77335679742464, 'first': 0.13112872838974, 'mid': 0.05574809014797211, 'last': 0.03278246894478798, 'loss': 3.396669626235962, 'counted': [6, 6], 'fwd': 6, 'bwd': 6, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 0, 'keys': '2b39c9b83e742cba'},
    'fal_value_residual': {'sum': 7.508237592675869, 'first': -0.048752207309007645, 'mid': 0.005062594078481197, 'last': -0.029404878616333008, 'loss': 3.3972890377044678, 'counted': [4, 5], 'fwd': 4, 'bwd': 5, 'blocks': [[2, 2], [1, 1], [1, 1]], 'stack': 1, 'keys': 'd7507767980fa7eb'},
    'denseformer': {'sum': 3.083037442735076, 'first': 0.0625569149851799, 'mid': 0.0461968258023262, 'last': -0.05554499477148056, 'loss': 3.3558406829833984, 'counted': [6, 6], 'fwd': 6, 'bwd': 6, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 0, 'keys': '9481b8412de7c03f'},
    # recorded from the first ladder version (same parameters and counts as baseline / fal)
    'ladder': {'sum': 8.978984607645543, 'first': 0.13940496742725372, 'mid': 0.0520707443356514, 'last': 0.026015225797891617, 'loss': 3.3988776206970215, 'counted': [6, 6], 'fwd': 6, 'bwd': 6, 'blocks': [[2, 2], [2, 2], [2, 2]], 'stack': 0, 'keys': '2b39c9b83e742cba'},
    'fal_ladder': {'sum': 7.733186202734942, 'first': -0.03976765647530556, 'mid': -0.0022261664271354675, 'last': -0.0306566022336483, 'loss': 3.4009084701538086, 'counted': [4, 5], 'fwd': 4, 'bwd': 5, 'blocks': [[2, 2], [1, 1], [1, 1]], 'stack': 1, 'keys': 'd7507767980fa7eb'},
}


def pin_of(variant: str) -> dict:
    """What a pin records, measured now."""
    model = make(variant)  # seed 0, random affine norms, gates and DWA weights
    torch.manual_seed(1)
    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]))
    with torch.no_grad():
        logits, loss = model(idx, idx)
    model.train()
    comm = CountingComm()
    for block in model.blocks:
        block.comm = comm
    model(idx, idx)[1].backward()
    counts = allreduce_counts(model.config)
    return dict(sum=logits.double().sum().item(), first=logits[0, 0, 0].item(), mid=logits[1, 3, 5].item(),
                last=logits[-1, -1, -1].item(), loss=loss.item(), counted=[comm.fwd, comm.bwd],
                fwd=counts["fwd"], bwd=counts["bwd"], blocks=[list(b) for b in counts["blocks"]],
                stack=counts["stack"], keys=hashlib.sha1("\n".join(model.state_dict()).encode()).hexdigest()[:16])


def test_every_preset_is_pinned():
    assert sorted(PINS) == sorted(VARIANTS)


@pytest.mark.parametrize("variant", list(PINS))
def test_preset_matches_its_pin(variant):
    pin, got = PINS[variant], pin_of(variant)
    values = ("sum", "first", "mid", "last", "loss")
    assert [got[k] for k in values] == pytest.approx([pin[k] for k in values], rel=0, abs=1e-6)
    assert got["keys"] == pin["keys"]  # the state-dict keys: checkpoints keep loading
    assert {k: v for k, v in got.items() if k not in values} == {k: v for k, v in pin.items() if k not in values}


if __name__ == "__main__":  # print a preset's pin, to add it to PINS: python tests/test_wiring_pins.py ladder
    import sys

    for name in sys.argv[1:]:
        print(f"    {name!r}: {pin_of(name)!r},")
