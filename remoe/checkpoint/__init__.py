"""Reading a Hugging Face MoE checkpoint (or a `remoe split` of one): its architecture, its safetensors files, the
names of its backbone and expert tensors, and the split manifest. Imports nothing of remoe above the leaves, so the
expert code and the serverless function read weights without the model runtime."""
