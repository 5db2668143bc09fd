"""ct-liver: the whole-liver 3D U-Net of pyliverlesionseg 0.3 (KU Leuven, Apache-2.0), ported to torch.

network.py   the network (its layers, in torch)
convert.py   its Keras HDF5 weights -> a torch state dict and a model folder (file to file)
preprocess.py  orientation, 1.5 mm / median / 3 mm resampling, intensity scaling, tiling
model.py     the Segmenter the registry loads from a model folder
"""
