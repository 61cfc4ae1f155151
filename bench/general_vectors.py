"""Write (or check) the general requests' vectors under the default encoder, shipped in the
package beside the requests (`router/general.py`): float16, one row per request.

    python -m bench.general_vectors [--check]

Run it after `python -m bench.routing_data` changes the general requests, or when the default
encoder changes (its identity names the file; a stale file is simply not used).
"""

from __future__ import annotations

import sys
from typing import Annotated

import numpy as np
import typer

from support.paths import ROOT
from switchboard_lora.router.encoder import Encoder
from switchboard_lora.router.general import SHIPPED_VECTORS, general_requests

FOLDER = ROOT / "router" / "data"  # the checkout's, not the installed package's


def main(
    check: Annotated[bool, typer.Option(help="Compare with the shipped file instead.")] = False,
) -> None:
    encoder = Encoder(None, "cpu")
    texts, _ = general_requests()
    vectors = encoder.encode(list(texts)).astype(np.float16)
    path = FOLDER / SHIPPED_VECTORS.format(identity=encoder.identity[:16])
    if check:
        shipped = np.load(path)
        gap = float(np.abs(shipped.astype(np.float32) - vectors.astype(np.float32)).max())
        if shipped.shape != vectors.shape or gap > 2e-3:
            sys.exit(f"{path.name} differs from a fresh encoding (largest gap {gap:.2e})")
        print(f"{path.name}: {len(texts)} rows, largest gap {gap:.2e}")
        return
    for stale in FOLDER.glob(SHIPPED_VECTORS.format(identity="*")):
        stale.unlink()
    np.save(path, vectors)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    typer.run(main)
