"""The installed wheel, used from outside the source tree (.ci/test-wheel runs it).

Usage: VENV/bin/python check_wheel.py VENV. Checks that nncme comes from VENV with its compiled
extension built against the torch it runs with, and that the wheel's kernels give what the
plain-PyTorch references give, draw for draw, on the toggle switch.
"""

import math
import sys
from importlib import metadata
from pathlib import Path

import torch

import nncme
from nncme import ops, systems
from nncme.models import build_model

where = Path(nncme.__file__).resolve()
venv = Path(sys.argv[1]).resolve()
assert where.is_relative_to(venv), f"nncme was imported from {where}, not from the wheel in {venv}"
info = nncme.build_info()
assert info["extension"], f"nncme._C did not load: {info.get('extension_error')}"
assert info["built_against_torch"] == torch.__version__, info
assert nncme.__version__ == metadata.version("nncme"), nncme.__version__

net = systems.toggle_switch()
compiled = net.compile("cpu", torch.float64)
outputs = {}
with torch.no_grad():  # log_prob takes the fused kernel only without autograd
    for impl in ("fused", "reference"):
        model = build_model("nade", net, hidden=8, impl=impl)
        states, log_q = model.sample(2000, torch.Generator().manual_seed(0))
        nbr, valid = ops.neighbors(states, compiled, impl=impl)
        inside = torch.where(valid[..., None], nbr, states[:, None])  # score in-box states only
        log_q_nbr = model.log_prob(inside.flatten(0, 1)).view(valid.shape)
        log_q_nbr = log_q_nbr.masked_fill(~valid, -math.inf)
        step = ops.transition_logsum(states, log_q, log_q_nbr, compiled, 0.0, 1e-3, impl=impl)
        outputs[impl] = (states, log_q, nbr, valid, log_q_nbr, *step)
for fused, reference in zip(outputs["fused"], outputs["reference"]):
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-9)
print(f"test-wheel: nncme {nncme.__version__} from {where.parent}: kernels match the references")
