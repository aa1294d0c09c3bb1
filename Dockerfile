# kube-lvs: kube-lvs-operator, kube-lvs-agent and the kubectl-lvs plugin in one image.
#
#   docker build -t kube-lvs:dev .
#   kind load docker-image kube-lvs:dev
#   helm install kube-lvs charts/kube-lvs -n kube-lvs --create-namespace \
#     --set image.repository=kube-lvs --set image.tag=dev
#
# Stages: `build` compiles the Rust binaries and the BPF objects (clang, libbpf
# headers); `tools` gathers the programs the agent runs (nft, for FullNAT on IPVS;
# BIRD 2's bird and birdc, for BGP announcement) with their libraries; `runtime` is
# distroless (no shell, no package manager) with those tools; the final image adds
# the binaries of `build`. The target `prebuilt` instead adds binaries already built
# outside (the build context's `bin/`): the test suite builds its image that way
# from the binaries it has just tested, without compiling them a second time.
#
# The base images are arguments so that a machine without access to a registry can
# build from local ones (tests/cluster/build-images.sh makes them with mmdebstrap).

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm
ARG BUILD_IMAGE=rust:${RUST_VERSION}-${DEBIAN}
ARG TOOLS_IMAGE=debian:${DEBIAN}-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libbpf-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Stripped: the release profile keeps line tables for local profiling, which would
# make the image's binaries several hundred megabytes.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p kubelvs-agent -p kubelvs-operator -p kubectl-lvs \
 && mkdir -p /out \
 && cp target/release/kube-lvs-agent target/release/kube-lvs-operator target/release/kubectl-lvs /out/ \
 && strip --strip-debug /out/*

FROM ${TOOLS_IMAGE} AS tools
SHELL ["/bin/bash", "-e", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables bird2 \
 && rm -rf /var/lib/apt/lists/*
# The programs and every library they load, each at its path with symbolic links
# resolved, so the copy lands the same on a base with or without a merged /usr.
RUN mkdir -p /rootfs/usr/sbin \
 && for prog in /usr/sbin/nft /usr/sbin/bird /usr/sbin/birdc; do \
      cp "$prog" /rootfs/usr/sbin/ \
      && for lib in $(ldd "$prog" | awk '/=> \//{print $3}' | sort -u); do \
           real=$(readlink -f "$lib") \
           && mkdir -p "/rootfs$(dirname "$real")" && cp "$real" "/rootfs$real" \
           && if [ "$(basename "$real")" != "$(basename "$lib")" ]; then \
                ln -sf "$(basename "$real")" "/rootfs$(dirname "$real")/$(basename "$lib")"; \
              fi; \
         done; \
    done

FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=tools /rootfs/ /
# The operator and the plugin run as this user; the agent's DaemonSet runs it as
# root with NET_ADMIN and NET_RAW only (sysctls and netlink need root's uid).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kube-lvs-operator"]

FROM runtime AS prebuilt
COPY bin/kube-lvs-agent bin/kube-lvs-operator bin/kubectl-lvs /usr/local/bin/

FROM runtime
COPY --from=build /out/kube-lvs-agent /out/kube-lvs-operator /out/kubectl-lvs /usr/local/bin/
