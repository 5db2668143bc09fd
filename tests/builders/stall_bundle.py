"""A test-only MONAI bundle whose network never finishes: it stands for a study that kills the model
process (out of memory, a segfault), so a test can kill that process mid-inference without timing luck.

Tests wait for the job's "inference" progress event (the bundle path reports it just before the sliding
window calls the network), then kill: by then the process is inside `forward`, sleeping.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.builders.bundle_layouts import build_layout_bundle

STALL_NET = '''

class StallNet(PhantomNet):
    """PhantomNet that sleeps in forward until its process is killed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time
        time.sleep(3600)
        return super().forward(x)
'''
INFERENCE_STAGE = "inference"          # the progress detail a job shows while the network runs
# a series described "poison" goes to the stall bundle (installed as models/stall), everything else to ct-basic
POISON_RULES = """
[[rules]]
name = "poison"
model = "stall"
match = { series_description = "poison" }
[[rules]]
name = "anything"
model = "ct-basic"
"""


def build_stall_bundle(root: Path) -> Path:
    build_layout_bundle(root, names=["background", "soft tissue", "lung", "bone"], soft=1, lung=2, bone=3)
    nets = root / "scripts" / "nets.py"
    nets.write_text(nets.read_text() + STALL_NET)
    config = root / "configs" / "inference.json"
    inference = json.loads(config.read_text())
    inference["network_def"]["_target_"] = "scripts.nets.StallNet"
    config.write_text(json.dumps(inference, indent=1))
    return root
