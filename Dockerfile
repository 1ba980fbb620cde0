# vm-service in a container (Debian 12). Two ways to get the binary in:
#   docker build -t vm-service .                        builds it in a Rust stage (needs the
#                                                       rust:1.95-bookworm image from a registry)
#   docker build --target prebuilt -t vm-service .      copies target/release/vm-service built on
#                                                       the host (cargo build --release --locked)
# BASE may name any Debian 12 image (e.g. one made with debootstrap where no registry is
# reachable: see README, "Container").
ARG BASE=debian:bookworm-slim
ARG RUST=rust:1.95-bookworm

FROM ${BASE} AS runtime-base
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q && apt-get install -y -q --no-install-recommends \
      qemu-system-x86 qemu-utils busybox-static dropbear-bin openssh-sftp-server openssh-client \
      cpio dosfstools mtools syslinux syslinux-common fdisk zip unzip e2fsprogs linux-image-amd64 \
      nftables ca-certificates curl tar gzip python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vmnet
COPY guest /opt/vm-service/guest
# The tiny guest image, built once into the container image; copied into the data volume on
# first start (docker/entrypoint.sh).
RUN bash /opt/vm-service/guest/build.sh --out /opt/vm-service/images/tiny
COPY docker/entrypoint.sh /usr/local/bin/vm-service-entrypoint
ENV VM_BASE_DIR=/var/lib/vm-service LISTEN_ADDR=0.0.0.0:8080
VOLUME /var/lib/vm-service
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/health >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/vm-service-entrypoint"]
CMD ["serve"]

FROM runtime-base AS prebuilt
COPY target/release/vm-service /usr/local/bin/vm-service

FROM ${RUST} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/vm-service /vm-service

FROM runtime-base AS runtime
COPY --from=build /vm-service /usr/local/bin/vm-service
