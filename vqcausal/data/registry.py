"""Dataset names -> sources: procedural by default, the user's own file with ``path``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vqcausal.data.source import GroundTruthSource
from vqcausal.errors import DataError

if TYPE_CHECKING:  # the config layer sits above data: a type, never a runtime import
    from vqcausal.config import DataConfig

DATASETS = {
    "shapes3d": "2.5-D scene: floor/wall/object hue, scale, shape, orientation (3dshapes.h5)",
    "sprites": "dSprites grid: shape, scale, orientation, pos_x, pos_y (dsprites .npz)",
    "pendulum": "CausalVAE pendulum: pendulum and light angle cause the shadow (PNG folder)",
    "mpi3d": "MPI3D robot arm, 7 factors, 1,036,800 images (mpi3d_{toy,realistic,real}.npz)",
    "smallnorb": "SmallNORB toys: category, instance, elevation, azimuth, lighting (6 .mat files)",
    "cars3d": "Cars3D: elevation, azimuth, car (cars/car_XXX_mesh.mat)",
    "celeba": "CelebA faces, binary attributes (img_align_celeba/ + list_*_celeba.txt)",
    "folder": "your images + factors.csv (path required)",
    "toy": "16x16 coloured bar: position and hue (tests and smoke runs)",
}

#: datasets read only from the user's files: what ``data.path`` must name
FILE_ONLY = {
    "mpi3d": "mpi3d_toy.npz, mpi3d_realistic.npz or mpi3d_real.npz as distributed",
    "smallnorb": "the folder of the six smallnorb-5x*-{training,testing}-{dat,cat,info}.mat files",
    "cars3d": "the cars/ folder of car_XXX_mesh.mat files",
    "celeba": "the folder of img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt",
}


def _load(config: DataConfig) -> GroundTruthSource:
    """The source a data config names, its labels all kept."""
    name, path = config.dataset, config.path
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    if path is not None and not Path(path).exists():
        raise DataError(f"{name}: data path not found: {path}")
    channels = config.channels
    if name == "shapes3d":
        if path is None:
            from vqcausal.data.shapes3d import Shapes3DRenderer

            return Shapes3DRenderer()
        from vqcausal.data.shapes3d_file import Shapes3DFile

        return Shapes3DFile(path)
    if name == "sprites":
        if path is None:
            from vqcausal.data.sprites import SpritesRenderer

            return SpritesRenderer(channels=channels or 1)
        from vqcausal.data.dsprites_file import DSpritesFile

        return DSpritesFile(path, channels=channels or 1)
    if name == "pendulum":
        if path is None:
            from vqcausal.data.pendulum import PendulumRenderer

            stride = 3 if config.stride is None else config.stride
            return PendulumRenderer(image_size=config.image_size or 96, stride=stride)
        from vqcausal.data.pendulum_folder import PendulumFolder

        return PendulumFolder(path, image_size=config.image_size, stride=config.stride)
    if name in FILE_ONLY:
        if path is None:
            raise DataError(
                f"dataset '{name}' needs data.path: {FILE_ONLY[name]} (nothing is downloaded)"
            )
        if name == "mpi3d":
            from vqcausal.data.mpi3d import MPI3DFile

            return MPI3DFile(path)
        if name == "smallnorb":
            from vqcausal.data.smallnorb import SmallNORBFolder

            return SmallNORBFolder(path, image_size=config.image_size)
        if name == "celeba":
            from vqcausal.data.celeba import CelebAFolder

            return CelebAFolder(path, attributes=config.attributes, image_size=config.image_size)
        from vqcausal.data.cars3d import Cars3DFolder

        return Cars3DFolder(path, image_size=config.image_size)
    if name == "toy":
        from vqcausal.data.toy import ToyRenderer

        return ToyRenderer()
    if path is None:
        raise DataError("dataset 'folder' needs data.path: a folder of images with factors.csv")
    from vqcausal.data.image_folder import ImageFolderSource

    return ImageFolderSource(
        path, cyclic=config.cyclic, channels=channels or 3, image_size=config.image_size
    )


def load_source(config: DataConfig) -> GroundTruthSource:
    """Build the source a data config names; unknown names and bad paths are DataErrors."""
    source = _load(config)
    if config.unlabelled:
        from vqcausal.data.photos import UnlabelledFactors

        return UnlabelledFactors(source, list(config.unlabelled))
    return source
