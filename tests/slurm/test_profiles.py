"""Cluster profiles: a mistake in one is caught when it is loaded, naming the key and the file,
before any job waits in a queue; a valid one maps to the submitit parameters it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from medhpc.config import ConfigError
from medhpc.sweep.cluster import (
    JOB_KINDS,
    PROFILE_DIR,
    ClusterProfile,
    executor_options,
    executor_parameters,
    load_profile,
)

EXAMPLE = PROFILE_DIR / "example-gpu.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_shipped_profiles_load_by_name_and_by_path() -> None:
    assert load_profile("local") == load_profile(PROFILE_DIR / "local.toml")
    profile = load_profile("example-gpu")
    assert isinstance(profile, ClusterProfile) and profile.name == "example-gpu"


def test_kinds_inherit_default_and_override_it() -> None:
    profile = load_profile("example-gpu")
    train, prepare = profile.resources("train"), profile.resources("prepare")
    assert (train.partition, train.gpus_per_node, train.mem_gb, train.qos) == ("gpu", 1, 64.0, "long")
    assert (prepare.partition, prepare.gpus_per_node, prepare.cpus_per_task) == ("cpu", 0, 16)


def test_example_gpu_parameters_for_train() -> None:
    params = executor_parameters(load_profile("example-gpu"), "train")
    assert params == {
        "name": "medhpc-train",
        "timeout_min": 1440,
        "cpus_per_task": 8,
        "mem_gb": 64.0,
        "gpus_per_node": 1,
        "slurm_partition": "gpu",
        "slurm_account": "proj-medhpc",
        "slurm_qos": "long",
        "slurm_constraint": "a100|h100",
        "slurm_array_parallelism": 64,
        "slurm_signal_delay_s": 180,
        "slurm_additional_parameters": {"mail-type": "FAIL", "requeue": True, "hint": "nomultithread"},
        "slurm_setup": ["module load apptainer", "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK"],
    }
    assert executor_options(load_profile("example-gpu")) == {
        "slurm_max_num_timeout": 5,
        "slurm_python": "apptainer exec --nv --bind /shared /shared/images/medhpc.sif python",
    }


def test_empty_string_drops_an_inherited_constraint_and_gres_mode_asks_for_gres(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'name = "site"\ngpu_request = "gres"\n[default]\nconstraint = "a100"\ngpus_per_node = 2\n'
        '[report]\nconstraint = ""\ngpus_per_node = 0\n',
    )
    profile = load_profile(path)
    assert executor_parameters(profile, "train")["slurm_gres"] == "gpu:2"
    assert "gpus_per_node" not in executor_parameters(profile, "train")
    report = executor_parameters(profile, "report")
    assert "slurm_constraint" not in report and "slurm_gres" not in report and "gpus_per_node" not in report


def test_unset_keys_leave_slurm_defaults() -> None:
    params = executor_parameters(ClusterProfile(name="bare"), "evaluate")
    assert params == {
        "name": "medhpc-evaluate",
        "timeout_min": 60,
        "cpus_per_task": 1,
        "slurm_array_parallelism": 256,
        "slurm_signal_delay_s": 90,
    }


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('name = "s"\npartition = "gpu"\n', "partition", "put it under [default]"),
        ('name = "s"\n[default]\npartiton = "gpu"\n', "default.partiton", "did you mean 'partition'"),
        ('name = "s"\nacount = "p1"\n', "acount", "did you mean 'account'"),
        ('name = "s"\n[default]\ngpus_per_nod = 1\n', "default.gpus_per_nod", "did you mean 'gpus_per_node'"),
        ('name = "s"\n[trian]\nmem_gb = 1\n', "trian", "did you mean 'train'"),
        ('name = "s"\n[train]\ncpus_per_task = "8"\n', "train.cpus_per_task", "expected an integer"),
        ('name = "s"\n[train]\nmem_gb = 0\n', "train.mem_gb", "must be > 0"),
        ('name = "s"\n[default]\ngpus_per_node = -1\n', "default.gpus_per_node", "must be >= 0"),
        ('name = "s"\nsbatch = ["--partition=gpu"]\n', "sbatch[0]", "set by the profile key partition"),
        ('name = "s"\nsbatch = ["--time=10"]\n', "sbatch[0]", "set by the profile key timeout_min"),
        ('name = "s"\nsbatch = ["-p gpu"]\n', "sbatch[0]", "one long sbatch option"),
        ('name = "s"\ngpu_request = "gpus"\n', "gpu_request", "must be one of"),
        ('name = "s"\npython = ""\n', "python", "must not be empty"),
        ('name = "s"\npython = "apptainer exec \'IMAGE"\n', "python", "not a valid shell command"),
        ('name = "s"\nsignal_delay_s = 600\n[train]\ntimeout_min = 10\n', "train.timeout_min", "no run time"),
        ('name = "s"\nsignal_delay_s = 600\n[default]\ntimeout_min = 5\n', "default.timeout_min", "no run time"),
        ('name = "s"\nsignal_delay_s = 3600\n', "signal_delay_s", "no run time"),
        ('name = "s"\narray_parallelism = 0\n', "array_parallelism", "must be >= 1"),
        ('[default]\nmem_gb = 1\n', "name", "missing"),
    ],
)
def test_mistakes_are_reported_with_key_and_file(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert f": {key}: " in str(info.value)
    assert message in str(info.value)


def test_unknown_profile_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="example-gpu, local"):
        load_profile("no-such-cluster")


def test_every_kind_has_resources() -> None:
    for name in ("local", "example-gpu"):
        profile = load_profile(name)
        for kind in JOB_KINDS:
            params = executor_parameters(profile, kind)
            assert params["timeout_min"] * 60 > profile.signal_delay_s
            assert params["name"] == f"medhpc-{kind}"
    with pytest.raises(ValueError, match="unknown job kind"):
        executor_parameters(load_profile("local"), "training")  # type: ignore[arg-type]
