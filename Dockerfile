# kube-lvs: kube-lvs-operator, kube-lvs-agent and the kubectl-lvs plugin in one image.
#
#   docker build -t kube-lvs:dev .
#   kind load docker-image kube-lvs:dev
#   helm install kube-lvs charts/kube-lvs -n kube-lvs --create-namespace \
#     --set image.repository=kube-lvs --set image.tag=dev
#
# Stages: `build` compiles the Rust binaries and the BPF objects (clang, libbpf
# headers); `tools` gathers the programs the agent runs (nft, for FullNAT on IPVS;
# BIRD 2's bird and birdc, for BGP announcement) with their libraries; the final image
# is distroless: no shell, no package manager.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libbpf-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p kubelvs-agent -p kubelvs-operator -p kubectl-lvs \
 && mkdir -p /out \
 && cp target/release/kube-lvs-agent target/release/kube-lvs-operator target/release/kubectl-lvs /out/

FROM debian:${DEBIAN}-slim AS tools
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables bird2 \
 && rm -rf /var/lib/apt/lists/*
# The programs and every library they load, at the same paths.
RUN mkdir -p /rootfs/usr/sbin \
 && for prog in /usr/sbin/nft /usr/sbin/bird /usr/sbin/birdc; do \
      cp "$prog" /rootfs/usr/sbin/ \
      && for lib in $(ldd "$prog" | awk '/=> \//{print $3}' | sort -u); do \
           mkdir -p "/rootfs$(dirname "$lib")" && cp -L "$lib" "/rootfs$lib"; \
         done; \
    done

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=tools /rootfs/ /
COPY --from=build /out/kube-lvs-agent /out/kube-lvs-operator /out/kubectl-lvs /usr/local/bin/
# The operator and the plugin run as this user; the agent's DaemonSet runs it as
# root with NET_ADMIN and NET_RAW only (sysctls and netlink need root's uid).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kube-lvs-operator"]
