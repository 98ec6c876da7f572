from twisted.application.service import ServiceMaker

speedy_chunkmaster = ServiceMaker(
    "Speedy chunkmaster",
    "speedy.chunkmaster.tap",
    "Track chunkservers and groups, hand out file-id ranges.",
    "speedy-chunkmaster",
)
