"""Does a C++ error raised inside an nncme operator reach Python as a RuntimeError?

    python benchmarks/check_exceptions.py     # exit 0: it does; a crash (SIGSEGV, 139): not

On the first GPU machine every argument check of the operators killed the process instead,
and the module built there had no dynamic libstdc++ (two C++ runtimes cannot hand an exception
to each other). Prints the module's linked libraries and the error that crossed.
"""

from __future__ import annotations

import subprocess

import nncme._C
import torch

print("module:", nncme._C.__file__)
needed = subprocess.run(["readelf", "-d", nncme._C.__file__], capture_output=True, text=True)
print("\n".join(line for line in needed.stdout.splitlines() if "NEEDED" in line))
x = torch.zeros(2, 3, dtype=torch.float64)
try:  # a 2-D O where the operator takes (G, N, P): its shape check throws
    torch.ops.nncme.fisher_solve(x, x[:, :1].float(), torch.ones(2, dtype=x.dtype), 1e-2, 0, 10)
except RuntimeError as err:
    print("a C++ error crossed into Python:", str(err).splitlines()[0])
else:
    raise SystemExit("the operator accepted a 2-D O")
