"""
The Kubernetes manifests of C{contrib/kubernetes/}: valid for the API
(C{kubernetes-validate --strict}, offline, from the test extra), and
consistent with the image and with each other (probes on the metrics port,
a grace period longer than the preStop pause plus the drain, the image's
UID).  C{tests/test_container_e2e.py} runs them with C{podman kube play}.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml
from twisted.trial import unittest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = os.path.join(REPOSITORY, "contrib", "kubernetes")
#: Files for clusters with the Prometheus Operator only, left out of
#: kustomization.yaml (kubernetes-validate has no schema for their kind).
OPTIONAL = {"podmonitor.yaml"}


def load(name):
    with open(os.path.join(MANIFESTS, name), encoding="utf-8") as f:
        return yaml.safe_load(f)


def validate(*paths):
    """
    Run C{kubernetes-validate --strict} (this venv's) on C{paths}.
    """
    script = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    return subprocess.run([script, "--strict", *paths], capture_output=True, text=True,
                          timeout=120)


def containerfileDirective(name):
    with open(os.path.join(REPOSITORY, "Containerfile"), encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    return [line.split(None, 1)[1].strip() for line in text.splitlines()
            if line.startswith(name + " ")]


class ValidationTests(unittest.TestCase):
    def test_kustomizationListsEveryManifest(self):
        """
        kustomization.yaml applies every manifest but the optional ones.
        """
        kustomization = load("kustomization.yaml")
        present = {name for name in os.listdir(MANIFESTS) if name.endswith(".yaml")}
        self.assertEqual(set(kustomization["resources"]),
                         present - OPTIONAL - {"kustomization.yaml"})

    def test_strictlyValid(self):
        """
        Every resource kustomization.yaml applies passes
        C{kubernetes-validate --strict}, each recognised by its schema.
        """
        resources = load("kustomization.yaml")["resources"]
        result = validate(*(os.path.join(MANIFESTS, name) for name in resources))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        for name in resources:
            self.assertRegex(result.stdout + result.stderr, re.escape(name) + r" passed")

    def test_strictCatchesAnUnknownField(self):
        """
        The validation is strict: a misspelt field fails it (so the test
        above is no formality).
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        deployment = load("deployment.yaml")
        deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
        path = os.path.join(directory, "deployment.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(deployment, f)
        self.assertNotEqual(validate(path).returncode, 0)


class DeploymentTests(unittest.TestCase):
    def setUp(self):
        self.deployment = load("deployment.yaml")
        self.pod = self.deployment["spec"]["template"]["spec"]
        (self.container,) = self.pod["containers"]

    def port(self, name):
        for port in self.container["ports"]:
            if port["name"] == name:
                return port
        raise AssertionError(f"no port {name}")

    def test_rollingUpdate(self):
        spec = self.deployment["spec"]
        self.assertGreaterEqual(spec["replicas"], 2)
        self.assertEqual(spec["strategy"]["type"], "RollingUpdate")
        self.assertEqual(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0)

    def test_probesAskHealthz(self):
        """
        Readiness and liveness ask /healthz on the port --metrics serves.
        """
        self.assertIn("--metrics=tcp:9810", self.container["args"])
        self.assertEqual(self.port("metrics")["containerPort"], 9810)
        for probe in ("readinessProbe", "livenessProbe"):
            get = self.container[probe]["httpGet"]
            self.assertEqual((get["path"], get["port"]), ("/healthz", "metrics"))

    def test_gracePeriod(self):
        """
        The grace period covers the preStop pause and the whole drain, with
        room for twistd's own shutdown.
        """
        pause = self.container["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(pause[0], "/bin/sleep")
        (drain,) = [float(arg.split("=", 1)[1]) for arg in self.container["args"]
                    if arg.startswith("--drain-timeout=")]
        self.assertGreater(self.pod["terminationGracePeriodSeconds"],
                           float(pause[1]) + drain + 5)

    def test_securityContext(self):
        pod, container = self.pod["securityContext"], self.container["securityContext"]
        self.assertTrue(pod["runAsNonRoot"])
        self.assertEqual(pod["seccompProfile"]["type"], "RuntimeDefault")
        self.assertTrue(container["readOnlyRootFilesystem"])
        self.assertFalse(container["allowPrivilegeEscalation"])
        self.assertEqual(container["capabilities"]["drop"], ["ALL"])
        # The image's fixed UID: runAsNonRoot needs a number to check.
        (user,) = containerfileDirective("USER")
        self.assertEqual(f"{pod['runAsUser']}:{pod['runAsGroup']}", user)

    def test_tmpIsAnEmptyDir(self):
        (mount,) = self.container["volumeMounts"]
        self.assertEqual(mount["mountPath"], "/tmp")
        (volume,) = [v for v in self.pod["volumes"] if v["name"] == mount["name"]]
        self.assertIn("emptyDir", volume)

    def test_resources(self):
        self.assertIn("memory", self.container["resources"]["limits"])
        self.assertIn("cpu", self.container["resources"]["requests"])

    def test_scrapeAnnotations(self):
        annotations = self.deployment["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/scrape"], "true")
        self.assertEqual(annotations["prometheus.io/port"], "9810")

    def test_listenersMatchTheImage(self):
        """
        The args name the image's ports (they replace its CMD).
        """
        exposed = containerfileDirective("EXPOSE")[0].split()
        ports = {f"{p['containerPort']}/{p['protocol'].lower()}" for p in self.container["ports"]}
        self.assertEqual(ports, set(exposed))
        self.assertIn("--listen=tcp:8809:backlog=1024", self.container["args"])
        self.assertIn("--udp=8808", self.container["args"])


class ServiceTests(unittest.TestCase):
    def test_bothProtocols(self):
        service = load("service.yaml")
        deployment = load("deployment.yaml")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        named = {p["name"]: p for p in container["ports"]}
        ports = {(p["port"], p["protocol"]): p["targetPort"] for p in service["spec"]["ports"]}
        self.assertEqual(set(ports), {(8809, "TCP"), (8808, "UDP")})
        for (port, protocol), target in ports.items():
            self.assertEqual((named[target]["containerPort"], named[target]["protocol"]),
                             (port, protocol))
        self.assertEqual(service["spec"]["selector"],
                         deployment["spec"]["selector"]["matchLabels"])

    def test_disruptionBudget(self):
        budget = load("poddisruptionbudget.yaml")
        deployment = load("deployment.yaml")
        self.assertEqual(budget["spec"]["selector"], deployment["spec"]["selector"])
        self.assertLess(budget["spec"]["maxUnavailable"], deployment["spec"]["replicas"])
