"""How hosted experts are computed: one kernel per MoE layer, chosen by inspecting its experts module.

- `native`: the gated-SiLU family over weights packed once for gated_mlp.c (AVX-512, float32 arithmetic,
  one call per layer for all of a batch's experts); measured at the machine's read bandwidth at decode.
- `aten`: the gated-MLP family through torch's F.linear on contiguous weights, without a module per expert.
- `onednn`: the same over weights reordered once for oneDNN (torch.ops.mkldnn); a candidate where the CPU
  has native bf16 matrix units (AMX), measured by bench/hardware_limit.py.
- `class`: the architecture's own experts class on the hosted slices: the reference, and the path for
  anything outside the gated-MLP family (GPT-OSS's clamped SwiGLU with biases, ...).
`auto` takes `native` where it builds and covers the layer, else `aten`, else `class`.
"""

from remoe.experts.kernels.select import KERNELS, ExpertKernel, choose_kernel, kernel_for_family

__all__ = ["KERNELS", "ExpertKernel", "choose_kernel", "kernel_for_family"]
