"""Checks of deploy/ beyond syntax (scripts/check-deploy runs it): the
Kubernetes manifests and the ECS task definition parse, probe /healthz on
9898, give the worker more than shutdown_timeout (60 s) to stop, run it as
the image's non-root user; the unit's stop timeout does too. Prints the
ConfigMap's consumer.toml to the file given, for `config check`.
Usage: check_deploy.py CONFIGMAP_TOML_OUT"""
import json
import re
import sys

import yaml

SHUTDOWN_TIMEOUT = 60  # the worker's default shutdown_timeout, seconds
UID = 10001  # the image's user (deploy/Containerfile)
errors = []


def check(ok, what):
    if not ok:
        errors.append(what)


# Kubernetes
docs = [d for d in yaml.safe_load_all(open("deploy/kubernetes/deployment.yaml")) if d]
kinds = {d["kind"]: d for d in docs}
check({"Deployment", "ConfigMap"} <= kinds.keys(), f"deployment.yaml: kinds {sorted(kinds)}")
pod = kinds["Deployment"]["spec"]["template"]["spec"]
check(pod["terminationGracePeriodSeconds"] > SHUTDOWN_TIMEOUT, "deployment: terminationGracePeriodSeconds <= 60")
check(pod["securityContext"]["runAsNonRoot"] is True, "deployment: runAsNonRoot")
check(pod["securityContext"]["runAsUser"] == UID, "deployment: runAsUser")
(container,) = pod["containers"]
check(container["securityContext"]["readOnlyRootFilesystem"] is True, "deployment: readOnlyRootFilesystem")
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
for probe in ("readinessProbe", "livenessProbe"):
    get = container[probe]["httpGet"]
    check(get["path"] == "/healthz" and ports.get(get["port"], get["port"]) == 9898, f"deployment: {probe}")
mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
check(mounts.get("/etc/shardlake") == "config" and "/var/lib/shardlake" in mounts, "deployment: mounts")
toml = kinds["ConfigMap"]["data"]["consumer.toml"]
check('address = "0.0.0.0:9898"' in toml, "configmap: metrics address must be 0.0.0.0:9898 for the probes")

# ECS
task = json.load(open("deploy/ecs/task-definition.json"))
check(task["requiresCompatibilities"] == ["FARGATE"], "ecs: not Fargate")
worker = next(c for c in task["containerDefinitions"] if c["essential"])
check(SHUTDOWN_TIMEOUT < worker["stopTimeout"] <= 120, "ecs: stopTimeout must be in (60, 120]")
check("/usr/local/bin/shardlake-healthcheck" in worker["healthCheck"]["command"], "ecs: healthCheck")
check(worker["user"].split(":")[0] == str(UID), "ecs: user")
check(worker["readonlyRootFilesystem"] is True, "ecs: readonlyRootFilesystem")
check(any(p["containerPort"] == 9898 for p in worker["portMappings"]), "ecs: port 9898")
check(any("iam-policy" in t["value"] for t in task.get("tags", [])), "ecs: task role note")

# systemd
unit = open("deploy/systemd/shardlake-consumer.service").read()
m = re.search(r"^TimeoutStopSec=(\d+)s?$", unit, re.M)
check(m is not None and int(m.group(1)) > SHUTDOWN_TIMEOUT, "unit: TimeoutStopSec must exceed 60s")
for key in ("DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=shardlake", "Restart=on-failure",
            "KillSignal=SIGTERM", "NoNewPrivileges=yes"):
    check(re.search(rf"^{re.escape(key)}$", unit, re.M) is not None, f"unit: {key}")

open(sys.argv[1], "w").write(toml)
if errors:
    print("deploy/ checks failed:\n  " + "\n  ".join(errors))
    sys.exit(1)
print("deploy/: kubernetes, ecs and systemd settings ok")
