# hintkd images, two targets of this one file (engine/build_images.sh builds both,
# with Docker or, where no Docker engine runs, buildah):
#
#   gpu (the default): the CUDA build of Caffe for NVIDIA GPUs (sm_70 to sm_90, PTX
#       beyond), and the fast CPU build beside it for runs without --gpu
#   cpu: the fast CPU build alone
#
#   docker build -t hintkd:gpu .            docker build --target cpu -t hintkd:cpu .
#   docker run --gpus all --user "$(id -u):$(id -g)" -v "$PWD/runs:/runs" hintkd:gpu cifar10 26 14 proposed --gpu 0
#
# Debian 12, the OS the recipe is tested on in CI. Every step calls the project's own
# script (engine/install_caffe.sh), and CI builds and runs both images. The fast CPU
# build is portable (HINTKD_PORTABLE=1: no -march=native; oneDNN picks its kernels for
# the CPU it runs on), so an image runs on any x86-64 machine.
# engine/build-inputs/ may hold the pinned Caffe source, so that nothing in the build
# downloads from PyPI; engine/prebuilt/ a finished CUDA build of the same recipe
# (engine/install_caffe.sh explains both; empty, they change nothing).

FROM debian:12 AS build-cpu
ENV HINTKD_CACHE=/opt/hintkd/cache HINTKD_PORTABLE=1
COPY engine/install_caffe.sh engine/Makefile.config engine/Makefile.fast.config /opt/hintkd/src/engine/
COPY engine/patches/ /opt/hintkd/src/engine/patches/
COPY engine/build-inputs/ /opt/hintkd/src/engine/build-inputs/
# The build tools, the Caffe source, the build: one layer, no leftovers.
RUN /opt/hintkd/src/engine/install_caffe.sh --cpu \
    && rm -rf /opt/hintkd/cache/src /opt/hintkd/src/engine/build-inputs /var/lib/apt/lists/*

FROM debian:12 AS build-gpu
ENV HINTKD_CACHE=/opt/hintkd/cache
COPY engine/ /opt/hintkd/src/engine/
# Debian's non-free CUDA 11.8 toolkit, the Caffe source, the build (or the handed-in one).
RUN /opt/hintkd/src/engine/install_caffe.sh --cuda \
    && rm -rf /opt/hintkd/cache/src /var/lib/apt/lists/*

# The toolkit's files; the engine files build-cpu used (without build-inputs).
FROM scratch AS app
COPY --from=build-cpu /opt/hintkd/src/engine/ /opt/hintkd/app/engine/
COPY analysis/ /opt/hintkd/app/analysis/
COPY data_prep/ /opt/hintkd/app/data_prep/
COPY hintkd/ /opt/hintkd/app/hintkd/
COPY prototxt_templates/ /opt/hintkd/app/prototxt_templates/
COPY solvers/ /opt/hintkd/app/solvers/
COPY README.md generate.py run_stages.sh /opt/hintkd/app/

# Only what running needs: Python packages and the libraries the CPU build links.
# Any user id may run it (docker run --user): HOME and matplotlib's cache in /tmp.
FROM debian:12 AS runtime
ENV HINTKD_CACHE=/opt/hintkd/cache HINTKD_PORTABLE=1 HINTKD_OUT=/runs \
    HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib
COPY --from=app /opt/hintkd/app/engine/ /opt/hintkd/app/engine/
RUN /opt/hintkd/app/engine/install_caffe.sh --runtime --cpu \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --no-create-home --uid 1000 hintkd \
    && mkdir -p /runs /data \
    && chown hintkd:hintkd /runs /data

FROM runtime AS cpu
COPY --from=build-cpu /opt/hintkd/cache/ /opt/hintkd/cache/
COPY --from=app /opt/hintkd/app/ /opt/hintkd/app/
USER 1000:1000
WORKDIR /opt/hintkd/app
VOLUME ["/runs", "/data"]
ENTRYPOINT ["/opt/hintkd/app/run_stages.sh"]
CMD ["--help"]

FROM runtime AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
# The CUDA runtime libraries the CUDA build links (Debian's non-free).
RUN /opt/hintkd/app/engine/install_caffe.sh --runtime --cuda \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-cpu /opt/hintkd/cache/ /opt/hintkd/cache/
COPY --from=build-gpu /opt/hintkd/cache/ /opt/hintkd/cache/
COPY --from=app /opt/hintkd/app/ /opt/hintkd/app/
USER 1000:1000
WORKDIR /opt/hintkd/app
VOLUME ["/runs", "/data"]
ENTRYPOINT ["/opt/hintkd/app/run_stages.sh"]
CMD ["--help"]
