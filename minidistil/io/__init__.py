"""Checkpoints and text in and out: safetensors, from_pretrained / save_pretrained, fetching, training
checkpoints, the tokenizer, the int8 format (a plug-in). Import only models, core and kernels.
"""
