"""The core: Tensor and autograd, the ops (functional, losses), Module and its layers, optimisers, devices,
configs, model outputs, reading users' files, value rules, plug-in registry. Imports only kernels.
"""
