from twisted.application.service import ServiceMaker

speedy_chunkserver = ServiceMaker(
    "Speedy chunkserver",
    "speedy.chunkserver.tap",
    "Store image chunks and serve the Speedy wire protocol.",
    "speedy-chunkserver",
)
