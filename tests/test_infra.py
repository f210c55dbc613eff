"""infra/ is what its tools accept, checked offline (no cluster here to run it).

Kubernetes objects against the Kubernetes OpenAPI schemas of a pinned minor (kubernetes-validate,
strict: unknown fields fail), the RayJob against our schema of KubeRay's ray.io/v1 fields
(infra/schemas/rayjob-v1.schema.json) plus its pod templates against Kubernetes', the cluster
launcher config against Ray's own schema, the nightly trigger script run against a fake kubectl,
and one Ray version across the Dockerfile, the RayJob, the image tags and pyproject.
"""

import copy
import json
import re
import shlex
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
# The Kubernetes minor the manifests are validated against; the trigger's kubectl image is
# pinned to the same minor.
K8S_VERSION = "1.33"
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"  # the placeholder README replaces


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in load_all(path)}


def ray_version() -> str:
    """The one statement of the Ray version: the Dockerfile's ARG."""
    text = (INFRA / "Dockerfile").read_text()
    (version,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", text, flags=re.M)
    return version


def vqpipe_image() -> str:
    from vqpipe import __version__

    return f"{REGISTRY}/vqpipe:{__version__}-ray{ray_version()}"


def k8s_validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def rayjob_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((INFRA / "schemas" / "rayjob-v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def rayjob() -> dict:
    (doc,) = load_all(K8S / "rayjob.yaml")
    return doc


def pod_templates(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return templates


def trigger_container() -> dict:
    cron = by_kind(K8S / "nightly.yaml")["CronJob"]
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


# --- Kubernetes core objects -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["namespace.yaml", "serviceaccount.yaml", "nightly.yaml", "secret-s3.example.yaml"]
)
def test_core_objects_validate_against_kubernetes(name):
    docs = load_all(K8S / name)
    assert docs
    for doc in docs:
        k8s_validate(doc)


def test_nightly_has_every_object_it_needs():
    kinds = by_kind(K8S / "nightly.yaml")
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding", "CronJob"}
    cron, role, binding, account = (
        kinds[k] for k in ("CronJob", "Role", "RoleBinding", "ServiceAccount")
    )
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "vqpipe"}
    ]
    # Minimal rights: RayJobs only, no update/patch/watch, nothing cluster-wide.
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    assert set(rule["verbs"]) == {"get", "list", "create", "delete"}
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedule"] == "0 2 * * *"


def test_kustomization_generates_the_template_configmap_the_cronjob_mounts():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "vqpipe"
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret-s3.example.yaml" not in kustomization["resources"]  # no keys in git
    (generator,) = kustomization["configMapGenerator"]
    # The ConfigMap as kustomize writes it (before the hash suffix), validated like the rest.
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"], "namespace": kustomization["namespace"]},
        "data": {Path(f).name: (K8S / f).read_text() for f in generator["files"]},
    }
    k8s_validate(configmap)
    cron = by_kind(K8S / "nightly.yaml")["CronJob"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == generator["name"]
    container = trigger_container()
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TEMPLATE"] == f"{mount['mountPath']}/rayjob.yaml"
    assert env["TEMPLATE"].rsplit("/", 1)[1] in configmap["data"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not here")
def test_kustomize_build_validates():
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "CronJob",
    }
    for doc in docs:
        k8s_validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "vqpipe"
    configmap = kinds["ConfigMap"]["metadata"]["name"]
    assert configmap.startswith("vqpipe-rayjob-template-")  # content hash: edits roll out
    pod = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert {"name": configmap} in [v.get("configMap") for v in pod["volumes"]]
    rayjob_validator().validate(yaml.safe_load(kinds["ConfigMap"]["data"]["rayjob.yaml"]))


def test_kubernetes_validate_rejects_broken_objects():
    cron = by_kind(K8S / "nightly.yaml")["CronJob"]
    misspelled = copy.deepcopy(cron)
    misspelled["spec"]["concurrencyPolicyy"] = misspelled["spec"].pop("concurrencyPolicy")
    wrong_type = copy.deepcopy(cron)
    wrong_type["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "two"
    for broken in (misspelled, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            k8s_validate(broken)


# --- The RayJob --------------------------------------------------------------------------------


def test_rayjob_matches_the_kuberay_schema_and_its_pods_the_kubernetes_one():
    job = rayjob()
    rayjob_validator().validate(job)
    for name, template in pod_templates(job).items():
        wrapped = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": name},
            "template": template,
        }
        k8s_validate(wrapped)


def _broken(mutate) -> dict:
    job = copy.deepcopy(rayjob())
    mutate(job["spec"])
    return job


BROKEN_RAYJOBS = {
    "misspelled field": lambda s: s["rayClusterSpec"].update(enableInTreeAutoScaling=True),
    "rayStartParams not strings": lambda s: s["rayClusterSpec"]["headGroupSpec"].update(
        rayStartParams={"num-cpus": 0}
    ),
    "worker group without template": lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].pop(
        "template"
    ),
    "unknown submission mode": lambda s: s.update(submissionMode="KubernetesJob"),
    "ttl without shutdown": lambda s: s.update(shutdownAfterJobFinishes=False),
    "autoscaler options without autoscaling": lambda s: s["rayClusterSpec"].update(
        enableInTreeAutoscaling=False
    ),
    "bad rayVersion": lambda s: s["rayClusterSpec"].update(rayVersion="2.60"),
    "no entrypoint": lambda s: s.pop("entrypoint"),
    "group name not a DNS label": lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].update(
        groupName="GPU_score"
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_RAYJOBS))
def test_schema_rejects_a_broken_rayjob(case):
    with pytest.raises(jsonschema.ValidationError):
        rayjob_validator().validate(_broken(BROKEN_RAYJOBS[case]))


def test_schema_requires_a_name_or_generate_name():
    job = copy.deepcopy(rayjob())
    del job["metadata"]["generateName"]
    with pytest.raises(jsonschema.ValidationError):
        rayjob_validator().validate(job)
    job["metadata"]["name"] = "vqpipe-nightly-20260101-0200"
    rayjob_validator().validate(job)


def test_rayjob_autoscales_and_cleans_up():
    spec = rayjob()["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    # A stuck run must end well before the next night (the trigger skips while one is active).
    assert spec["activeDeadlineSeconds"] < 24 * 3600
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def _quantity_gib(text: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", text).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


def test_every_ray_pod_has_credentials_shm_and_the_pinned_image():
    account = by_kind(K8S / "serviceaccount.yaml")["ServiceAccount"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::"
    )
    secret = by_kind(K8S / "secret-s3.example.yaml")["Secret"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    templates = pod_templates(rayjob())
    assert set(templates) == {"head", "cpu-decode", "gpu-score"}
    for name, template in templates.items():
        pod = template["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"], name
        (container,) = pod["containers"]
        assert container["image"] == vqpipe_image(), name
        assert container["workingDir"] == "/home/ray/vqpipe", name  # entrypoint's relative path
        assert {"secretRef": {"name": secret["metadata"]["name"], "optional": True}} in container[
            "envFrom"
        ], name
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["emptyDir"]["medium"] == "Memory", name
        # The memory-backed volume counts against the pod's memory: it must fit well inside it.
        limit = _quantity_gib(container["resources"]["limits"]["memory"])
        assert _quantity_gib(volume["emptyDir"]["sizeLimit"]) <= 0.5 * limit, name
        resources_ = container["resources"]
        assert resources_["requests"] == resources_["limits"], name  # Ray reads the limits
        gpu = "nvidia.com/gpu" in resources_["limits"]
        tolerates = any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
        assert gpu == tolerates == bool(pod.get("nodeSelector")), name
    (gpu_container,) = templates["gpu-score"]["spec"]["containers"]
    assert "nvidia.com/gpu" in gpu_container["resources"]["limits"]


def test_entrypoint_is_a_score_command_the_cluster_can_scale_for():
    from vqpipe.cli import build_parser, job_config_from_args

    job = rayjob()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "pipelines/score_corpus.py"]
    assert (ROOT / argv[1]).is_file()
    args = build_parser().parse_args(["score", *argv[2:]])
    assert args.input.startswith("s3://") and args.out.startswith("s3://")
    (scorer,) = job_config_from_args(args).scorers
    assert scorer.num_gpus == 1
    low, high = scorer.actors
    assert 1 <= low < high, "an actor range is what the autoscaler scales for"
    gpu_group = next(
        g
        for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    )
    gpus_per_pod = int(
        gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert gpu_group["maxReplicas"] * gpus_per_pod >= high * scorer.num_gpus


# --- The nightly trigger, run against a fake kubectl --------------------------------------------

FAKE_KUBECTL = """#!/bin/sh
# Records each call; answers `get rayjobs` from $FAKE_STATUS / $FAKE_NAMES.
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *"-o jsonpath="*) printf '%b' "$FAKE_STATUS" ;;
  *"-o name"*) printf '%b' "$FAKE_NAMES" ;;
  "create -f -") cat > "$FAKE_CREATED" ;;
  delete*) ;;
  *) echo "fake kubectl: unexpected $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def run_trigger(tmp_path):
    if not all(shutil.which(tool) for tool in ("sh", "awk", "sed", "date")):
        pytest.skip("needs a POSIX shell with awk, sed and date")
    fake = tmp_path / "bin" / "kubectl"
    fake.parent.mkdir()
    fake.write_text(FAKE_KUBECTL)
    fake.chmod(0o755)
    script = trigger_container()["args"][0]

    def run(status: str, names: str = "", keep: int = 2):
        env = {
            "PATH": f"{fake.parent}:/usr/bin:/bin",
            "TEMPLATE": str(K8S / "rayjob.yaml"),
            "KEEP": str(keep),
            "FAKE_STATUS": status,
            "FAKE_NAMES": names,
            "FAKE_LOG": str(tmp_path / "calls"),
            "FAKE_CREATED": str(tmp_path / "created.yaml"),
        }
        result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
        calls = (tmp_path / "calls").read_text().splitlines()
        created = tmp_path / "created.yaml"
        return result, calls, yaml.safe_load(created.read_text()) if created.exists() else None

    return run


def test_trigger_creates_a_dated_rayjob_and_prunes_old_ones(run_trigger):
    result, calls, created = run_trigger(
        status="vqpipe-nightly-1 Complete\\nvqpipe-nightly-2 Failed\\n",
        names="rayjob.ray.io/a\\nrayjob.ray.io/b\\nrayjob.ray.io/c\\n",
        keep=2,
    )
    assert result.returncode == 0, result.stderr
    assert "create -f -" in calls
    assert re.fullmatch(r"vqpipe-nightly-\d{8}-\d{4}", created["metadata"]["name"])
    assert "generateName" not in created["metadata"]
    rayjob_validator().validate(created)
    assert created["spec"] == rayjob()["spec"]
    assert created["metadata"]["labels"] == rayjob()["metadata"]["labels"]
    assert [c for c in calls if c.startswith("delete")] == ["delete rayjob.ray.io/a"]


@pytest.mark.parametrize("status", ["vqpipe-nightly-1 Running\\n", "vqpipe-score-x7k2p \\n"])
def test_trigger_skips_the_night_while_a_run_is_unfinished(run_trigger, status):
    result, calls, created = run_trigger(status=status)
    assert result.returncode == 0, result.stderr
    assert created is None and not any(c.startswith(("create", "delete")) for c in calls)
    assert "still running" in result.stdout


def test_trigger_stops_when_kubectl_fails(run_trigger, tmp_path):
    (tmp_path / "bin" / "kubectl").write_text("#!/bin/sh\necho denied >&2\nexit 1\n")
    result = subprocess.run(
        ["sh", "-c", trigger_container()["args"][0]],
        env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "TEMPLATE": "/nonexistent", "KEEP": "2"},
        capture_output=True,
        text=True,
    )
    # A failed listing must fail the Job (visible in the CronJob's history), not create blindly.
    assert result.returncode != 0


def test_trigger_image_is_pinned_to_the_validated_kubernetes_minor():
    image = trigger_container()["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag != "latest" and re.fullmatch(r"\d+\.\d+\.\d+", tag), image
    assert tag.startswith(f"{K8S_VERSION}."), image


# --- Versions, cluster launcher, Dockerfile, README --------------------------------------------


def test_one_ray_version_everywhere():
    ray = ray_version()
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-gpu" in dockerfile
    assert '"ray[default,data,train,serve]==${RAY_VERSION}"' in dockerfile
    assert rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == ray
    images = re.findall(
        r"\S+/vqpipe:[\w.-]+",
        "\n".join(
            p.read_text()
            for p in [*K8S.glob("*.yaml"), INFRA / "cluster.yaml", INFRA / "Dockerfile"]
        ),
    )
    assert images and all(i.endswith(f"/vqpipe:{vqpipe_image().rsplit(':', 1)[1]}") for i in images)
    pyproject = (ROOT / "pyproject.toml").read_text()
    (lower,) = set(re.findall(r'"ray\[[\w,]+\]>=([\d.]+)"', pyproject))  # ray[...], ray[serve]
    assert ray.split(".")[:2] == lower.split(".")[:2], (ray, lower)


def test_cluster_launcher_config():
    config = yaml.safe_load((INFRA / "cluster.yaml").read_text())
    schema = json.loads(resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # Ray's own schema for `ray up`
    assert config["head_node_type"] in config["available_node_types"]
    assert "gpu_workers" in config["available_node_types"]
    assert config["docker"]["image"] == vqpipe_image()
    profiles = {}
    for name, node_type in config["available_node_types"].items():
        profile = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", profile), name
        profiles[name] = profile
    # Workers do every read: they need storage access, not the head's EC2 rights.
    assert profiles["cpu_workers"] == profiles["gpu_workers"] != profiles["head"]


def test_dockerfile_installs_vqpipe_on_a_gpu_base():
    text = (INFRA / "Dockerfile").read_text()
    base = next(line for line in text.splitlines() if line.startswith("FROM"))
    assert base.endswith("-gpu")
    assert '"torch===2.13.0"' in text and 'pip install --no-cache-dir ".[video,serve]"' in text


def test_deploy_guide_names_the_files_and_commands():
    text = (ROOT / "docs" / "deploying.md").read_text()  # README links to it
    section = text[text.index("## Deploying") :]
    section = section[: section.find("\n## ", 1)]
    for needle in (
        f"vqpipe:{vqpipe_image().rsplit(':', 1)[1]}",
        "docker build -f infra/Dockerfile",
        "kubectl apply -k infra/k8s",
        "kubectl create -n vqpipe -f infra/k8s/rayjob.yaml",
        "eks.amazonaws.com/role-arn",
        "create secret generic vqpipe-s3",
        "ray up -y infra/cluster.yaml",
        "ray job submit",
        "kubernetes-validate",
    ):
        assert needle in section, needle
    # The local Ray that drives `ray up` / `ray job submit` must be the image's.
    assert set(re.findall(r"ray\[default\]==([\d.]+)", section)) == {ray_version()}


# --- The RayService (vqpipe serve) -------------------------------------------------------------


def rayservice() -> dict:
    (doc,) = load_all(K8S / "rayservice.yaml")
    return doc


def rayservice_validator() -> jsonschema.Draft202012Validator:
    """Our RayService schema, which takes the RayCluster spec from the RayJob schema."""
    from referencing import Registry, Resource

    schemas = [
        json.loads((INFRA / "schemas" / f).read_text())
        for f in ("rayjob-v1.schema.json", "rayservice-v1.schema.json")
    ]
    for schema in schemas:
        jsonschema.Draft202012Validator.check_schema(schema)
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
    return jsonschema.Draft202012Validator(schemas[1], registry=registry)


def serve_config() -> dict:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def test_rayservice_matches_the_kuberay_schema_and_its_pods_the_kubernetes_one():
    service = rayservice()
    rayservice_validator().validate(service)
    cluster = service["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    assert set(templates) == {"head", "gpu-serve"}
    for name, template in templates.items():
        k8s_validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": name},
                "template": template,
            }
        )
        (container,) = template["spec"]["containers"]
        assert container["image"] == vqpipe_image(), name
        port = serve_config()["http_options"]["port"]
        assert {"name": "serve", "containerPort": port} in container["ports"], name
    assert cluster["rayVersion"] == ray_version()


BROKEN_RAYSERVICES = {
    "misspelled spec field": lambda s: s["spec"].update(
        serveConfigV3=s["spec"].pop("serveConfigV2")
    ),
    "no serve config": lambda s: s["spec"].pop("serveConfigV2"),
    "generateName (a RayService is applied)": lambda s: s.update(
        metadata={"generateName": "vqpipe-serve-"}
    ),
    "cluster field misspelled": lambda s: s["spec"]["rayClusterConfig"].update(
        headGroupSpecs=s["spec"]["rayClusterConfig"].pop("headGroupSpec")
    ),
    "unknown upgrade strategy": lambda s: s["spec"].update(upgradeStrategy={"type": "Rolling!"}),
}


@pytest.mark.parametrize("case", sorted(BROKEN_RAYSERVICES))
def test_schema_rejects_a_broken_rayservice(case):
    service = copy.deepcopy(rayservice())
    BROKEN_RAYSERVICES[case](service)
    with pytest.raises(jsonschema.ValidationError):
        rayservice_validator().validate(service)


def test_rayservice_application_is_vqpipe_serve_and_fits_its_cluster():
    from vqpipe.pipeline.validate import check_scorer
    from vqpipe.service.column import check_servable
    from vqpipe.service.config import config_from_args

    config = serve_config()
    (app,) = config["applications"]
    assert app["import_path"] == "vqpipe.service.app:app_builder"
    assert app["route_prefix"] == "/"
    assert config["http_options"]["host"] == "0.0.0.0"
    service = config_from_args(app["args"])  # unknown keys fail here
    assert service.max_request_bytes == 64 * 2**20 and service.limits.read_timeout_s == 60
    (spec,) = service.scorers
    check_scorer(spec, {})
    check_servable(spec)
    assert spec.column == "gamma" and spec.batch_size == 64
    # One GPU per scorer replica, and as many GPU workers as replicas at most.
    (group,) = service_groups = rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == str(int(spec.num_gpus)) == "1"
    assert (group["minReplicas"], group["maxReplicas"]) == spec.actors
    assert service_groups and rayservice()["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"]


def test_rayservice_serve_config_is_what_ray_serve_accepts():
    schema = pytest.importorskip("ray.serve.schema", exc_type=ImportError)
    schema.ServeDeploySchema.model_validate(serve_config())
