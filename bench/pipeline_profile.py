"""Where each service of the pipeline spends its time under a paced load: py-spy records
every `feedback run` process of `bench/pipeline.py`'s set-up while wrk sends feedback, then
this prints, per service, the share of samples by package (psycopg, pydantic, aiokafka,
faststream, asyncio, the platform's own `services`, ...) and the platform's innermost frames.

`python -m bench.pipeline_profile [SECONDS] [DELAY_MS]` (defaults 30 s, 300 ms between
requests per connection: about 90 feedback/s here). Needs wrk and py-spy
(`pip install py-spy`; it reads other processes' memory, so it runs as root or with
ptrace allowed). The raw collapsed stacks stay in a temporary folder, named in the output,
for flame graphs. Not in `make bench`: a diagnosis, not a figure to keep.

py-spy samples wall time of threads it sees running; a thread waiting in a C call (a socket
read) can count as running, so large psycopg or asyncio shares mean round trips as much as
CPU: read them with the CPU per component `bench.pipeline` prints.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.pipeline import _cpu_lines, _load, _texts_file, pipeline_running

_FILE = re.compile(r"\(([^:)]+)")


def breakdown(collapsed: Path, top: int = 8) -> list[str]:
    """One service's samples by package, and its innermost frames in `services/`."""
    packages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = stack.split(";")
        found = _FILE.search(frames[-1])
        path = found.group(1) if found else "?"
        package = path if path.startswith("<") else path.split("/")[0]
        if frames[-1].startswith("Runner.run"):
            package = "(event loop idle)"
        packages[package] += samples
        mine = [frame for frame in frames if "(services/" in frame]
        if mine:
            own[mine[-1].split(" (")[0]] += samples
    if not total:
        return [f"== {collapsed.stem}: no samples"]
    return [
        f"== {collapsed.stem} ({total} samples)",
        "  by package: "
        + ", ".join(f"{name} {n * 100 / total:.0f}%" for name, n in packages.most_common(top)),
        "  innermost platform frames: "
        + "; ".join(f"{name} {n * 100 / total:.0f}%" for name, n in own.most_common(top)),
    ]


def main(seconds: float = 30.0, delay_ms: int = 300) -> None:
    beside = Path(sys.executable).with_name("py-spy")  # installed in this virtualenv
    spy = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if spy is None:
        raise SystemExit("bench.pipeline_profile needs py-spy (pip install py-spy)")
    out = Path(tempfile.mkdtemp(prefix="pipeline-profile-"))
    texts = _texts_file()
    try:
        with pipeline_running() as pipeline:
            _load(pipeline, texts, 5, delay_ms)  # warm-up: connections, the model
            recorders = [
                subprocess.Popen(
                    [
                        *(spy, "record", "-p", str(process.pid), "-d", str(int(seconds))),
                        *("-r", "50", "--format", "raw", "--nonblocking"),
                        *("-o", str(out / f"{name}.txt")),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name, process in pipeline.services.items()
            ]
            run = _load(pipeline, texts, seconds, delay_ms)
            for recorder in recorders:
                recorder.wait()
    finally:
        texts.unlink(missing_ok=True)
    print(f"paced {seconds:.0f} s: accepted {run.accepted_per_s:.0f}/s")
    print("\n".join(_cpu_lines(run)[0]))
    for collapsed in sorted(out.glob("*.txt")):
        print("\n".join(breakdown(collapsed)))
    print(f"raw stacks (collapsed, for flame graphs): {out}")


if __name__ == "__main__":
    main(
        float(sys.argv[1]) if len(sys.argv) > 1 else 30.0,
        int(sys.argv[2]) if len(sys.argv) > 2 else 300,
    )
