// pybind11 bindings of the tiled attention kernels (csrc/attention.cu): raw device pointers as
// integers, sizes, strides in elements, dtype code (0 fp32, 1 fp16, 2 bf16), impl (0 auto:
// tensor cores for fp16/bf16, SIMT for fp32; 1 SIMT for every dtype) and the CUDA stream handle.
// Called from csrc/bindings.cpp: autodistil::bind_attention(m).
#include <pybind11/pybind11.h>

#include <cstdint>

namespace autodistil {

int64_t attention_max_seq_len();
void attention_forward(int dtype, int impl, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, int64_t mask_b,
                       uintptr_t o, uintptr_t lse, int64_t B, int64_t A, int64_t T, int64_t D,
                       int64_t sqb, int64_t sqa, int64_t sqt, int64_t skb, int64_t ska, int64_t skt,
                       int64_t svb, int64_t sva, int64_t svt, int64_t sob, int64_t soa, int64_t sot,
                       uintptr_t stream);
void attention_probs(int dtype, uintptr_t q, uintptr_t k, uintptr_t mask, int64_t mask_b, uintptr_t lse,
                     uintptr_t probs, int64_t B, int64_t A, int64_t T, int64_t D, int64_t sqb, int64_t sqa,
                     int64_t sqt, int64_t skb, int64_t ska, int64_t skt, uintptr_t stream);
void attention_backward(int dtype, int impl, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, int64_t mask_b,
                        uintptr_t o, uintptr_t dout, uintptr_t lse, uintptr_t delta, uintptr_t dq, uintptr_t dk,
                        uintptr_t dv, int64_t B, int64_t A, int64_t T, int64_t D,
                        int64_t sqb, int64_t sqa, int64_t sqt, int64_t skb, int64_t ska, int64_t skt,
                        int64_t svb, int64_t sva, int64_t svt, int64_t sob, int64_t soa, int64_t sot,
                        int64_t sdob, int64_t sdoa, int64_t sdot, int64_t sdqb, int64_t sdqa, int64_t sdqt,
                        int64_t sdkb, int64_t sdka, int64_t sdkt, int64_t sdvb, int64_t sdva, int64_t sdvt,
                        uintptr_t stream);

void bind_attention(pybind11::module_& m) {
  m.def("attention_max_seq_len", &attention_max_seq_len,
        "the largest sequence length T the attention kernels accept (forward, probs and backward alike)");
  m.def("attention_forward", &attention_forward,
        "tiled attention forward: writes O (through its strides) and the row LSE (fp32, log2 units)");
  m.def("attention_probs", &attention_probs, "softmax probabilities (B, A, T, T) from the saved LSE");
  m.def("attention_backward", &attention_backward,
        "deterministic attention backward: delta = rowsum(dO*O), then dK/dV and dQ passes");
}

}  // namespace autodistil
