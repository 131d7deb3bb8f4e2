"""The shell commands the cluster docs show, as argv lists, for the tests that check and run them.

``test_cluster_configs.py`` checks that each ``python -m pipelines.X`` they name accepts its flags;
``test_cluster_job.py`` runs them against a local head. The docs are cluster/README.md (its fenced shell
blocks) and the README's "Running on a cluster" section (its inline ``ray job submit`` commands). Not
collected by pytest (no ``test_``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUSTER_README = REPO / "cluster" / "README.md"
README = REPO / "README.md"
README_CLUSTER_SECTION = "## Running on a cluster"


def fenced_shell(path: Path = CLUSTER_README) -> str:
    """The fenced shell blocks of a Markdown file (prose, and Dockerfile blocks, are not shell)."""
    return "\n".join(re.findall(r"```(?:bash|sh)\n(.*?)```", path.read_text(), re.DOTALL))


def section(path: Path, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    text = path.read_text()
    start = text.index(heading + "\n")
    level = heading.split(" ", 1)[0]
    following = re.compile(rf"^#{{1,{len(level)}}} ", re.MULTILINE).search(text, start + len(heading))
    return text[start:following.start() if following else len(text)]


def inline_commands(text: str, program: str) -> str:
    """The inline code spans of ``text`` that start with ``program``, one per line (spans may wrap)."""
    spans = re.findall(r"`([^`]+)`", text)
    return "\n".join(" ".join(span.split()) for span in spans if span.startswith(program + " "))


def readme_job_commands() -> str:
    """The ``ray job submit`` commands of the README's cluster section."""
    return inline_commands(section(README, README_CLUSTER_SECTION), "ray job submit")


def shell_commands(text: str) -> list[list[str]]:
    """Shell text as argv lists: backslash continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def pipeline_commands(text: str) -> list[list[str]]:
    """The ``python -m pipelines.X ...`` part of every command that runs one (for ``ray job submit
    ... -- python -m ...``, what follows the ``--``)."""
    commands = []
    for argv in shell_commands(text):
        for i in range(len(argv) - 2):
            if argv[i:i + 2] == ["python", "-m"] and argv[i + 2].startswith("pipelines."):
                commands.append(argv[i:])
                break
    return commands


# --- running them on one machine -------------------------------------------------------------------------

RUN_FOLDERS_SECTION = "## What a run directory holds"
INCEPTION = "/mnt/shared/weights/pt_inception-2015-12-05-6726825d.pth"
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# Leading words of the commands that need the cloud (their configs are checked by test_cluster_configs.py),
# of the long-running ones (started as services), and of those that set up the shell.
CLOUD = (("ray", "up"), ("ray", "dashboard"), ("ray", "down"), ("kubectl",))
SERVICES = (("mlflow", "server"), ("ray", "start"))
SETUP = (("export",), ("source",), ("ray", "get-auth-token"), ("chmod",))
JOBS = (("ray", "job", "submit"), ("ray", "job", "logs"))
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def docs_text() -> str:
    """Every command the cluster docs show, cluster/README.md's first, continuation lines joined."""
    return re.sub(r"\\\n\s*", " ", fenced_shell() + "\n" + readme_job_commands())


def command_kind(argv: list[str]) -> str:
    """'cloud', 'service', 'setup' or 'job' (a ``VAR=value`` prefix aside); KeyError for any other command."""
    words = [word for word in argv if not ASSIGNMENT.match(word)]
    for kind, prefixes in (("cloud", CLOUD), ("service", SERVICES), ("setup", SETUP), ("job", JOBS)):
        if any(tuple(words[:len(prefix)]) == prefix for prefix in prefixes):
            return kind
    raise KeyError(f"cluster docs show a command no test runs or knows to need the cloud: {shlex.join(argv)}")


def local_values(run: str, home: str, head_url: str, mlflow_port: int) -> list[tuple[str, str]]:
    """The docs' cluster values and what each becomes on one machine with the ``tiny`` preset, in order."""
    mlflow = f"127.0.0.1:{mlflow_port}"
    return [
        # no Inception weights here: weigh takes the run's domain network, the pipeline its default
        (f"--backbone inception --inception-weights {INCEPTION}",
         f"--backbone domain --domain-checkpoint {run}/domain"),
        (f"--inception-weights {INCEPTION} ", ""),
        ("/mnt/shared/rgm/runs/paper", run), ("RUN/", f"{run}/"),
        ("/mnt/shared/datasets/cifar10", FASHION_MNIST), ("--real cifar10", "--real fashion-mnist"),
        ("--preset paper", "--preset tiny"), ("--gpus-per-worker 1", "--gpus-per-worker 0"),
        ("--num-samples 150000", "--num-samples 128"), ("--shard-size 1000", "--shard-size 64"),
        ("--k 10000", "--k 32"),
        ("http://HEAD:8265", head_url), ("http://mlflow.internal.example.com:5000", f"http://{mlflow}"),
        ("127.0.0.1:5000", mlflow), ("--port 5000", f"--port {mlflow_port}"),
        ("$HOME", home), ("~/", f"{home}/"),
    ]


def localize(text: str, values: list[tuple[str, str]]) -> str:
    """``text`` with each value replaced; one the docs no longer contain fails, naming it."""
    for old, new in values:
        assert old in text, f"the cluster docs no longer contain {old!r}: update cluster_docs.local_values"
        text = text.replace(old, new)
    return text


def run_folders() -> list[str]:
    """The folders and files cluster/README.md says a run directory holds (its table's first column)."""
    rows = [line for line in section(CLUSTER_README, RUN_FOLDERS_SECTION).splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]
