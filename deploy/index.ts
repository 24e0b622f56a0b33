/**
 * deploy/ — how moeserve runs outside a laptop: the container image (Dockerfile), a one-host
 * topology with docker compose (gateway + 2 expert workers + Redis), Kubernetes manifests
 * (k8s/: a worker StatefulSet, one shard per pod, and a gateway Deployment), and service configs
 * (configs/). Nothing here is imported by the code.
 */
export {};
