"""Infra files parse and name the fields their tools expect (no cluster here to run them)."""

from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"


def test_rayjob_manifest():
    rayjob, cron = yaml.safe_load_all((INFRA / "rayjob-nightly.yaml").read_text())
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    assert spec["entrypoint"].startswith("python pipelines/score_corpus.py ")
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    gpu_groups = [
        g
        for g in cluster["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups and all(
        g["minReplicas"] <= g["maxReplicas"] for g in cluster["workerGroupSpecs"]
    )
    assert (cron["kind"], cron["spec"]["schedule"]) == ("CronJob", "0 2 * * *")


def test_cluster_launcher_config():
    config = yaml.safe_load((INFRA / "cluster.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type"} <= set(config)
    assert config["head_node_type"] in config["available_node_types"]
    assert "gpu_workers" in config["available_node_types"]


def test_dockerfile_installs_vqpipe_on_a_gpu_base():
    text = (INFRA / "Dockerfile").read_text()
    base = next(line for line in text.splitlines() if line.startswith("FROM"))
    assert base.endswith("-gpu")
    assert '"torch===2.13.0"' in text and 'pip install --no-cache-dir ".[video]"' in text
