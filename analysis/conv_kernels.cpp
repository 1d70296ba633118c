// One 3x3 convolution's forward, backward-data and backward-weights passes through
// oneDNN, each timed alone (best of REPS), for analysis/benchmark_conv_kernels.py.
// Compiles against oneDNN 2.x and 3.x: the two APIs differ only in how a primitive
// descriptor is made.
//
//   conv_kernels IMAGES CHANNELS SIZE STRIDE direct|winograd REPS
//
// prints one JSON line: ms per pass and the kernel oneDNN chose, or the reason none.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <oneapi/dnnl/dnnl.hpp>

using dnnl::memory;

static double Now() {
  return std::chrono::duration<double>(
      std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s IMAGES CHANNELS SIZE STRIDE direct|winograd REPS\n", argv[0]);
    return 2;
  }
  const memory::dim images = atoi(argv[1]), channels = atoi(argv[2]);
  const memory::dim size = atoi(argv[3]), stride = atoi(argv[4]);
  const std::string name = argv[5];
  const int reps = atoi(argv[6]);
  const auto algorithm = name == "winograd" ? dnnl::algorithm::convolution_winograd
                                            : dnnl::algorithm::convolution_direct;
  // A ResNet's strided 3x3 convolution doubles the channels and halves the size.
  const memory::dim in_channels = stride == 2 ? channels / 2 : channels;
  const memory::dim out_size = size / stride;
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const auto any = [](memory::dims dims) {
    return memory::desc(dims, memory::data_type::f32, memory::format_tag::any);
  };
  const memory::desc src = any({images, in_channels, size, size});
  const memory::desc weights = any({channels, in_channels, 3, 3});
  const memory::desc dst = any({images, channels, out_size, out_size});
  const memory::dims strides = {stride, stride}, padding = {1, 1};
  try {
#if DNNL_VERSION_MAJOR >= 3
    const dnnl::convolution_forward::primitive_desc forward_pd(engine,
        dnnl::prop_kind::forward_training, algorithm, src, weights, dst,
        strides, padding, padding);
    const dnnl::convolution_backward_data::primitive_desc data_pd(engine,
        algorithm, src, weights, dst, strides, padding, padding, forward_pd);
    const dnnl::convolution_backward_weights::primitive_desc weights_pd(engine,
        algorithm, src, weights, dst, strides, padding, padding, forward_pd);
#else
    const dnnl::convolution_forward::primitive_desc forward_pd(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
            algorithm, src, weights, dst, strides, padding, padding), engine);
    const dnnl::convolution_backward_data::primitive_desc data_pd(
        dnnl::convolution_backward_data::desc(algorithm, src, weights, dst,
            strides, padding, padding), engine, forward_pd);
    const dnnl::convolution_backward_weights::primitive_desc weights_pd(
        dnnl::convolution_backward_weights::desc(algorithm, src, weights, dst,
            strides, padding, padding), engine, forward_pd);
#endif
    memory x(forward_pd.src_desc(), engine), w(forward_pd.weights_desc(), engine);
    memory y(forward_pd.dst_desc(), engine), dx(data_pd.diff_src_desc(), engine);
    memory dw(weights_pd.diff_weights_desc(), engine), dy(weights_pd.diff_dst_desc(), engine);
    memory* all[] = {&x, &w, &y, &dx, &dw, &dy};
    for (memory* m : all) {  // small values that never overflow or go denormal
      float* p = static_cast<float*>(m->get_data_handle());
      const size_t n = m->get_desc().get_size() / sizeof(float);
      for (size_t i = 0; i < n; ++i) p[i] = 0.1f * static_cast<float>(i % 7);
    }
    const dnnl::convolution_forward forward(forward_pd);
    const dnnl::convolution_backward_data data(data_pd);
    const dnnl::convolution_backward_weights weight(weights_pd);
    double best[3] = {1e9, 1e9, 1e9};
    for (int r = 0; r <= reps; ++r) {  // the first round warms up
      double t[4];
      t[0] = Now();
      forward.execute(stream, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, y}});
      stream.wait();
      t[1] = Now();
      data.execute(stream, {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, dx}});
      stream.wait();
      t[2] = Now();
      weight.execute(stream, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw}});
      stream.wait();
      t[3] = Now();
      for (int k = 0; r > 0 && k < 3; ++k) best[k] = std::min(best[k], t[k + 1] - t[k]);
    }
    printf("{\"forward\": %.4f, \"backward_data\": %.4f, \"backward_weights\": %.4f, "
           "\"kernels\": [\"%s\", \"%s\", \"%s\"]}\n", best[0] * 1e3, best[1] * 1e3, best[2] * 1e3,
           forward_pd.impl_info_str(), data_pd.impl_info_str(), weights_pd.impl_info_str());
  } catch (const dnnl::error& e) {  // e.g. no Winograd kernels on this CPU or version
    printf("{\"unavailable\": \"%s\"}\n", e.what());
  }
  return 0;
}
