# hintkd with the CUDA build of Caffe, for NVIDIA GPUs (sm_70 to sm_90, PTX beyond).
#
#   docker build -t hintkd .
#   docker run --gpus all -v "$PWD/runs:/runs" hintkd cifar10 26 14 proposed --gpu 0
#
# Debian 12, the OS the recipe is tested on in CI. Every step calls the project's
# own scripts (engine/install_caffe.sh), so CI, which runs them, tests this file.

FROM debian:12 AS build
ENV HINTKD_CACHE=/opt/hintkd/cache HINTKD_CAFFE_VARIANT=cuda
COPY engine/ /opt/hintkd/src/engine/
# Debian's non-free CUDA 11.8 toolkit, the Caffe source, the build: one layer, no leftovers.
RUN /opt/hintkd/src/engine/install_caffe.sh \
    && rm -rf /opt/hintkd/cache/src /var/lib/apt/lists/*

FROM debian:12 AS runtime
ENV HINTKD_CACHE=/opt/hintkd/cache HINTKD_CAFFE_VARIANT=cuda HINTKD_OUT=/runs \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY engine/ /opt/hintkd/app/engine/
# Only what running needs: Python packages and the libraries the build links (CUDA runtime included).
RUN /opt/hintkd/app/engine/install_caffe.sh --runtime \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 hintkd \
    && mkdir -p /runs /data \
    && chown hintkd:hintkd /runs /data
COPY --from=build /opt/hintkd/cache /opt/hintkd/cache
COPY . /opt/hintkd/app/
USER 1000:1000
WORKDIR /opt/hintkd/app
VOLUME ["/runs", "/data"]
ENTRYPOINT ["/opt/hintkd/app/run_stages.sh"]
CMD ["--help"]
