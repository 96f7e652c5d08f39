#!/usr/bin/env bash
# make kind-up: a kind cluster with Knative Serving (+ Kourier), Remoe's images loaded, and Remoe deployed.
# Needs docker (an engine), kind and kubectl; about 10 minutes the first time (image builds, Knative).
# Pinned: Knative Serving and net-kourier knative-v1.21.0, kind node kindest/node:v1.33.1 (k8s/kind/cluster.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
KNATIVE_VERSION=${KNATIVE_VERSION:-1.21.0}
CLUSTER=remoe
SERVING=https://github.com/knative/serving/releases/download/knative-v${KNATIVE_VERSION}
KOURIER=https://github.com/knative/net-kourier/releases/download/knative-v${KNATIVE_VERSION}

for tool in docker kind kubectl; do
  command -v $tool >/dev/null || { echo "make kind-up needs $tool: see README.md, 'Kubernetes (kind + Knative)'" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "make kind-up needs a running Docker engine ('docker info' fails)" >&2; exit 1; }

step() { echo; echo "--- $*"; }

step "1/6 kind cluster '$CLUSTER' (k8s/kind/cluster.yaml)"
if kind get clusters | grep -qx "$CLUSTER"; then
  echo "exists; reusing it"
else
  kind create cluster --config k8s/kind/cluster.yaml --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "2/6 Knative Serving v$KNATIVE_VERSION with Kourier"
kubectl apply -f "$SERVING/serving-crds.yaml"
kubectl wait --for=condition=Established --timeout=120s crd/services.serving.knative.dev
kubectl apply -f "$SERVING/serving-core.yaml"
kubectl apply -f "$KOURIER/kourier.yaml"
kubectl -n knative-serving patch configmap/config-network --type merge \
  -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
# Functions mount the model PVC read-only; Knative allows PVC volumes only when this feature is on.
kubectl -n knative-serving patch configmap/config-features --type merge \
  -p '{"data":{"kubernetes.podspec-persistent-volume-claim":"enabled","kubernetes.podspec-persistent-volume-write":"disabled"}}'
kubectl -n knative-serving wait --for=condition=Available --timeout=300s deployment --all
kubectl -n kourier-system wait --for=condition=Available --timeout=300s deployment --all

step "3/6 images (make images), loaded into the kind node"
make images
# dev.local/...: Knative skips tag-to-digest resolution for this registry, so the function image needs no registry.
docker tag remoe/expert-function:0.1.0 dev.local/remoe/expert-function:0.1.0
for image in gateway backbone predictor scheduler expert tools; do
  kind load docker-image --name "$CLUSTER" "remoe/$image:0.1.0"
done
kind load docker-image --name "$CLUSTER" dev.local/remoe/expert-function:0.1.0

step "4/6 Remoe (kubectl apply -k k8s/)"
kubectl apply -k k8s/

step "5/6 the tiny model into the volume (job/model-init), then every service ready"
kubectl -n remoe wait --for=condition=Complete --timeout=600s job/model-init
kubectl -n remoe rollout status statefulset/redis statefulset/qdrant statefulset/expert --timeout=600s
for d in backbone predictor scheduler gateway; do kubectl -n remoe rollout status "deployment/$d" --timeout=600s; done

step "6/6 ready"
kubectl -n remoe get pods
cat <<MSG

Remoe is up on kind. The gateway's gRPC is on 127.0.0.1:50051, Jaeger's UI on http://127.0.0.1:16686.
  .venv/bin/remoe generate --address 127.0.0.1:50051 --max-new-tokens 16 "Hello"
  .venv/bin/remoe status --address 127.0.0.1:50051
  kubectl -n remoe get ksvc        # the functions the plans created (scale to zero when idle)
make kind-down deletes the cluster.
MSG
