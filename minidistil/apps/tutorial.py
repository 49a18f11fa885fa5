"""The set-up every tutorial chapter (tutorials/NN_name.py) runs first:

    from minidistil.apps.tutorial import setup

    OUT = setup()            # then the chapter's own imports: numpy, matplotlib.pyplot, numba, minidistil...

This module imports only the standard library (and `import minidistil` itself loads neither numpy nor numba), so
`setup()` runs before numba is first imported, which is when numba reads NUMBA_ENABLE_CUDASIM.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def setup() -> Path:
    """Prepare the process for a chapter and return OUT, the folder its figures go to.

    1. No GPU (no /dev/nvidiactl): NUMBA_ENABLE_CUDASIM=1, so the numba.cuda cells run on the CUDA simulator
       (each GPU thread a Python thread: slow, so those cells use tiny shapes). A value you set is kept. It takes
       effect only if numba is not imported yet: call setup() before anything that imports numba.
    2. Outside Jupyter (no ipykernel loaded, e.g. `python 01_gelu.py`): matplotlib's Agg backend, so figures are
       drawn to files and no window opens. In Jupyter the kernel's inline backend shows them.
    3. OUT: the folder MINIDISTIL_TUTORIAL_OUT names, else a new temporary folder; made if missing, and printed.
    """
    if not os.path.exists("/dev/nvidiactl"):
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    if "ipykernel" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")
    out = Path(os.environ.get("MINIDISTIL_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minidistil_tutorial_"))
    out.mkdir(parents=True, exist_ok=True)
    print("figures go to", out)
    return out
