# billguard container image.
#
# Build:  docker build -t billguard:0.1.0 .
# Run:    docker run -p 4180:4180 -v $PWD/billguard.toml:/etc/billguard/billguard.toml:ro \
#           -e OIDC_CLIENT_SECRET=... -e BILLGUARD_SESSION__SECRET=... billguard:0.1.0
#
# The build stage runs deploy/build-image-steps.sh, the same script CI
# runs, so its steps are proven on machines without a container engine.
# With --pgo it builds with profile-guided optimisation
# (deploy/pgo-build.sh), which installs nginx, wrk and curl in the build
# stage for its training run; none of them reach the runtime image.
# The runtime image is distroless (glibc, CA certificates, no shell) and runs
# as the unprivileged user 65532.
#
# Ports: 4180 (the proxy, `listen`), 9090 (metrics, when `metrics_listen`
# is set). Configuration: /etc/billguard/billguard.toml (BILLGUARD_CONFIG);
# mount your own over it, and give secrets through the environment.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN deploy/build-image-steps.sh --pgo --out /out

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /
ENV BILLGUARD_CONFIG=/etc/billguard/billguard.toml \
    BILLGUARD_LOG_FORMAT=json
USER 65532:65532
EXPOSE 4180 9090
ENTRYPOINT ["/usr/local/bin/billguard", "serve"]
