from twisted.application.service import ServiceMaker

speedy_imageserver = ServiceMaker(
    "Speedy imageserver",
    "speedy.imageserver.tap",
    "Serve the registry, file and chunk APIs over the chunk cluster.",
    "speedy-imageserver",
)
