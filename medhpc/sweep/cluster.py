"""Cluster profiles: what a sweep's jobs ask SLURM for, kept out of the sweep's config.

The same sweep runs on the one-node test cluster (``slurm/profiles/local.toml``) and on a
site's GPU cluster (``slurm/profiles/example-gpu.toml``): only the profile changes. A profile
holds the site facts (partition, account, QOS, node constraint, extra ``#SBATCH`` lines, a
container command) and the resources of each job kind (``prepare``, ``train``, ``attack``,
``evaluate``, ``report``), each inheriting from ``[default]``. It is validated when loaded
(a typo costs a queue slot otherwise) and mapped to submitit's arguments here, in one place,
so that a change of submitit's parameter names breaks one tested function::

    profile = load_profile("slurm/profiles/example-gpu.toml")
    executor = submitit.AutoExecutor(folder, cluster="slurm", **executor_options(profile))
    executor.update_parameters(**executor_parameters(profile, "train"))

:func:`executor_parameters` uses submitit's generic names (``timeout_min``, ``mem_gb``,
``cpus_per_task``, ``gpus_per_node``) where they exist, so a ``local`` or ``debug``
AutoExecutor accepts the same dictionary and ignores the ``slurm_`` ones. Profile keys are
documented in ``slurm/README.md``.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from medhpc.config import ConfigError, bad, from_dict, read_mapping

if TYPE_CHECKING:  # submitit is imported only by whoever builds an executor
    import submitit

JobKind = Literal["prepare", "train", "attack", "evaluate", "report"]
JOB_KINDS: tuple[JobKind, ...] = get_args(JobKind)

# Where the profiles shipped with the repository live (a bare name such as "local" finds them).
PROFILE_DIR = Path(__file__).resolve().parents[2] / "slurm" / "profiles"  # medhpc/sweep/cluster.py -> repo root

# sbatch options that a profile sets through its own keys: an extra line must not override them
# silently (submitit lets `additional_parameters` win over everything it computed itself).
_OWNED_OPTIONS = {
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "constraint": "constraint",
    "time": "timeout_min",
    "mem": "mem_gb",
    "gpus-per-node": "gpus_per_node",
    "cpus-per-task": "cpus_per_task",
    "job-name": "the sweep (it names jobs by config hash)",
    "array": "array_parallelism",
    "output": "submitit (it owns the log paths)",
    "error": "submitit (it owns the log paths)",
    "signal": "signal_delay_s",
    "nodes": "submitit (medhpc jobs are single-node)",
}
_SBATCH_LINE = re.compile(r"^--(?P<key>[A-Za-z][A-Za-z0-9_-]*)(?:=(?P<value>\S.*))?$")

# Container runtimes whose command line a profile's `python` may hold, and those options of their
# `exec` and `run` that take a value (the next word), so that the image can be told apart from the
# options. An option that takes a value and is missing here only makes the checks below lenient.
_CONTAINER_RUNTIMES = frozenset({"apptainer", "singularity"})
_CONTAINER_VALUE_OPTIONS = frozenset(
    {
        "-B", "--bind", "--mount", "-H", "--home", "--pwd", "-W", "--workdir", "-S", "--scratch",
        "-o", "--overlay", "--env", "--env-file", "--security", "--network", "--network-args",
        "--hostname", "--dns", "--app", "--add-caps", "--drop-caps", "--cpus", "--memory",
    }
)  # fmt: skip
_CONTAINER_GPU_OPTIONS = frozenset({"--nv", "--nvccli"})


@dataclass(frozen=True)
class Resources:
    """What one kind of job asks for; ``None`` inherits (kind → ``[default]`` → built-in).

    Built-in values: no GPU, 1 CPU, the partition's default memory, 60 minutes. An empty
    ``partition``, ``qos`` or ``constraint`` asks for none even where ``[default]`` sets one
    (a CPU-only kind on a cluster whose default constraint names a GPU model).
    """

    partition: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int | None = None

    def _check(self) -> None:
        for key in ("partition", "qos", "constraint"):
            value = getattr(self, key)
            if value is not None and value != value.strip():
                raise bad(key, f"must not start or end with spaces, got {value!r}")
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            raise bad("gpus_per_node", f"must be >= 0, got {self.gpus_per_node}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise bad("cpus_per_task", f"must be >= 1, got {self.cpus_per_task}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise bad("mem_gb", f"must be > 0, got {self.mem_gb}")
        if self.timeout_min is not None and self.timeout_min < 1:
            raise bad("timeout_min", f"must be >= 1 minute, got {self.timeout_min}")

    def over(self, base: Resources) -> Resources:
        """These values, with ``base``'s wherever this one leaves a key out."""
        return Resources(
            **{
                f.name: getattr(self, f.name) if getattr(self, f.name) is not None else getattr(base, f.name)
                for f in dataclasses.fields(self)
            }
        )


_RESOURCE_KEYS = frozenset(f.name for f in dataclasses.fields(Resources))


@dataclass(frozen=True)
class ClusterProfile:
    """A cluster and the resources of each job kind, loaded from a TOML file.

    Attributes
    ----------
    name:
        Shown in logs and in ``python -m medhpc.sweep status``.
    partition, qos, constraint, gpus_per_node, cpus_per_task, mem_gb, timeout_min:
        Set through ``[default]`` and the per-kind tables; see :class:`Resources`.
    account:
        Charged for every job (``--account``); ``None`` uses the user's default account.
    gpu_request:
        ``"gpus_per_node"`` writes ``--gpus-per-node=N``; ``"gres"`` writes ``--gres=gpu:N``
        for sites whose SLURM predates ``--gpus-per-node`` or that require ``--gres``.
    sbatch:
        Extra ``#SBATCH`` lines in long form (``"--mail-type=FAIL"``, ``"--exclusive"``).
    setup:
        Shell lines run in the batch script before the job (``module load ...``).
    python:
        Command that runs Python on the compute node, e.g. a container
        (``apptainer exec --nv --bind /shared IMAGE python``); ``None`` reuses the submitting
        interpreter, which must then exist at the same path on the nodes.
    array_parallelism:
        At most this many tasks of one job array run at once (``--array=0-N%P``).
    max_requeues:
        How many times a timed-out checkpointable job is requeued before it is failed.
    signal_delay_s:
        SLURM signals a job this long before its time limit, so it can checkpoint.
    """

    name: str
    account: str | None = None
    gpu_request: Literal["gpus_per_node", "gres"] = "gpus_per_node"
    sbatch: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    python: str | None = None
    array_parallelism: int = 256
    max_requeues: int = 3
    signal_delay_s: int = 90
    default: Resources = Resources()
    prepare: Resources = Resources()
    train: Resources = Resources()
    attack: Resources = Resources()
    evaluate: Resources = Resources()
    report: Resources = Resources()

    def _check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise bad("name", f"must be a plain name (letters, digits, . _ -), got {self.name!r}")
        if self.account is not None and not self.account.strip():
            raise bad("account", "must not be empty (leave the key out instead)")
        for i, line in enumerate(self.sbatch):
            _parse_sbatch_line(line, f"sbatch[{i}]")
        if self.python is not None:
            try:
                words = shlex.split(self.python)
            except ValueError as exc:
                raise bad("python", f"not a valid shell command: {exc}") from None
            if not words:
                raise bad("python", "must not be empty (leave the key out to use this interpreter)")
            self._check_container_command(words)
        if self.array_parallelism < 1:
            raise bad("array_parallelism", f"must be >= 1, got {self.array_parallelism}")
        if self.max_requeues < 0:
            raise bad("max_requeues", f"must be >= 0, got {self.max_requeues}")
        if self.signal_delay_s < 0:
            raise bad("signal_delay_s", f"must be >= 0, got {self.signal_delay_s}")
        for kind in JOB_KINDS:
            timeout = self.resources(kind).timeout_min or 60
            if self.signal_delay_s >= timeout * 60:
                # Name the key the user wrote: the kind's own, the inherited default, or the delay.
                if getattr(self, kind).timeout_min is not None:
                    key = f"{kind}.timeout_min"
                elif self.default.timeout_min is not None:
                    key = "default.timeout_min"
                else:
                    key = "signal_delay_s"
                raise bad(
                    key,
                    f"{timeout} min leaves no run time before the checkpoint signal "
                    f"(signal_delay_s = {self.signal_delay_s})",
                )

    def _check_container_command(self, words: list[str]) -> None:
        """Catch, when loading, the container mistakes that would cost a queue slot each.

        ``apptainer exec [options] IMAGE`` with nothing after the image would run submitit's
        ``-u -m submitit.core._submit FOLDER`` as the container's command; without ``--nv`` the
        jobs that asked SLURM for GPUs would not see them and silently train on the CPU.
        Other commands (``apptainer run IMAGE`` with a run script that runs Python, a wrapper
        script, a plain interpreter path) pass unchecked.
        """
        if Path(words[0]).name not in _CONTAINER_RUNTIMES or len(words) < 2 or words[1] not in ("exec", "run"):
            return
        runtime, action = Path(words[0]).name, words[1]
        options: list[str] = []
        rest = words[2:]
        while rest and rest[0].startswith("-"):
            option = rest.pop(0)
            options.append(option)
            if option in _CONTAINER_VALUE_OPTIONS and rest:
                rest.pop(0)
        if not rest:
            raise bad("python", f"{runtime} {action}: no image given, got {self.python!r}")
        image, command = rest[0], rest[1:]
        if action == "exec" and not command:
            raise bad(
                "python",
                f"{runtime} exec runs the command after the image: end with the image's Python, "
                f"e.g. '... {image} python', got {self.python!r}",
            )
        gpu_kinds = [kind for kind in JOB_KINDS if (self.resources(kind).gpus_per_node or 0) > 0]
        if gpu_kinds and not _CONTAINER_GPU_OPTIONS.intersection(options):
            raise bad(
                "python",
                f"the {', '.join(gpu_kinds)} jobs ask for GPUs, which {runtime} shows to the container "
                f"only with --nv (before the image): {runtime} {action} --nv ...; got {self.python!r}",
            )

    def resources(self, kind: JobKind) -> Resources:
        """The resources of one job kind, ``[default]`` filled in."""
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(JOB_KINDS)}")
        own: Resources = getattr(self, kind)
        return own.over(self.default)


def _parse_sbatch_line(line: str, key: str) -> tuple[str, str | bool]:
    """``"--mail-type=FAIL"`` → ``("mail-type", "FAIL")``; ``"--exclusive"`` → ``("exclusive", True)``."""
    match = _SBATCH_LINE.match(line.strip())
    if match is None:
        raise bad(key, f"must be one long sbatch option, '--name' or '--name=value', got {line!r}")
    option = match.group("key")
    owner = _OWNED_OPTIONS.get(option) or _OWNED_OPTIONS.get(option.replace("_", "-"))
    if owner is not None:
        raise bad(key, f"--{option} is set by the profile key {owner}, not by an extra line")
    value = match.group("value")
    return option, True if value is None else value


def load_profile(path: str | Path) -> ClusterProfile:
    """Load and validate a profile file; a bare name (``"local"``) means ``slurm/profiles/NAME.toml``.

    Raises
    ------
    ConfigError
        Naming the file and the key: unknown key (with the nearest known one), wrong type,
        impossible value, or an extra sbatch line that overrides a profile key.
    """
    candidate = Path(path)
    if not candidate.exists() and candidate.suffix == "" and len(candidate.parts) == 1:
        shipped = PROFILE_DIR / f"{candidate.name}.toml"
        if shipped.exists():
            candidate = shipped
        else:
            known = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
            raise ConfigError(f"no cluster profile {str(path)!r}: not a file, nor one of {', '.join(known)}")
    data = read_mapping(candidate)
    for key in data:
        if key in _RESOURCE_KEYS:  # the likeliest slip: a site-wide resource written at the top
            raise ConfigError(
                f"{candidate}: {key}: a job resource; put it under [default] (every kind) "
                f"or under a kind's table ({', '.join(f'[{k}]' for k in JOB_KINDS)})"
            )
    return from_dict(ClusterProfile, data, source=str(candidate))


def executor_options(profile: ClusterProfile) -> dict[str, Any]:
    """Keyword arguments for ``submitit.AutoExecutor(folder, cluster=..., **options)``.

    submitit takes the Python command and the requeue budget when the executor is built, not
    in ``update_parameters`` (which rejects them).
    """
    options: dict[str, Any] = {"slurm_max_num_timeout": profile.max_requeues}
    if profile.python is not None:
        options["slurm_python"] = profile.python
    return options


def executor_parameters(profile: ClusterProfile, job_kind: JobKind) -> dict[str, Any]:
    """Keyword arguments for ``AutoExecutor.update_parameters`` for one kind of job.

    Keys left unset in the profile are left out, so SLURM's own defaults apply (the partition's
    default memory, the user's default account).
    """
    res = profile.resources(job_kind)
    params: dict[str, Any] = {
        "name": f"medhpc-{job_kind}",
        "timeout_min": res.timeout_min if res.timeout_min is not None else 60,
        "cpus_per_task": res.cpus_per_task if res.cpus_per_task is not None else 1,
        "slurm_array_parallelism": profile.array_parallelism,
        "slurm_signal_delay_s": profile.signal_delay_s,
    }
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    gpus = res.gpus_per_node or 0
    if gpus and profile.gpu_request == "gres":
        params["slurm_gres"] = f"gpu:{gpus}"
    elif gpus:
        params["gpus_per_node"] = gpus
    optional = {
        "slurm_partition": res.partition,
        "slurm_account": profile.account,
        "slurm_qos": res.qos,
        "slurm_constraint": res.constraint,
    }
    params.update({k: v for k, v in optional.items() if v})  # "" asks for none
    if profile.sbatch:
        params["slurm_additional_parameters"] = dict(
            _parse_sbatch_line(line, f"sbatch[{i}]") for i, line in enumerate(profile.sbatch)
        )
    if profile.setup:
        params["slurm_setup"] = list(profile.setup)
    return params


def make_executor(
    profile: ClusterProfile, folder: str | Path, job_kind: JobKind, cluster: str = "slurm"
) -> submitit.AutoExecutor:
    """An AutoExecutor for ``job_kind`` on ``cluster`` ("slurm", "local" or "debug")."""
    import submitit

    executor = submitit.AutoExecutor(folder, cluster=cluster, **executor_options(profile))
    executor.update_parameters(**executor_parameters(profile, job_kind))
    return executor
