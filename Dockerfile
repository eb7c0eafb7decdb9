# syntax=docker/dockerfile:1
#
# The tidegate sidecar image: one static binary on distroless, as user 65532.
#
#   docker build -t tidegate \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg COMMIT=$(git rev-parse HEAD) .
#   docker run --rm -p 8080:8080 -p 8081:8081 \
#     -e TIDEGATE_UPSTREAM=host.docker.internal:3000 tidegate
#
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ...
# (the builder cross-compiles; no emulation needed).
#
# The injector image (tidegate-inject: CLI and webhook), same arguments:
#   docker build --target inject -t tidegate-inject .

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Dependencies first, so that a source change does not re-download them.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ARG COMMIT=unknown
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/tidegate ./cmd/tidegate

# The injector: built only for --target inject.
FROM build AS build-inject
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ARG COMMIT=unknown
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/tidegate-inject ./cmd/tidegate-inject

FROM gcr.io/distroless/static-debian12:nonroot AS inject
COPY --from=build-inject /out/tidegate-inject /tidegate-inject
USER 65532:65532
# 8443: the webhook (deploy/kubernetes/webhook).
EXPOSE 8443
ENTRYPOINT ["/tidegate-inject"]
CMD ["webhook"]

# The sidecar: the last stage, so the default target.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tidegate /tidegate
USER 65532:65532
# 8080 public listener, 8081 health (/readyz /livez /startupz). The admin
# listener (/metrics /status /config /debug/pprof/) stays on 127.0.0.1:9901
# inside the container unless --admin-listen says otherwise.
EXPOSE 8080 8081
# tidegate drains on SIGTERM (Docker's default stop signal); give it longer
# than --drain-timeout: docker stop --time 45.
ENTRYPOINT ["/tidegate"]
CMD ["run"]
