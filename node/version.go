package node

// Version is the gridnet release this package belongs to; `gridnet
// version` prints it and the gridnet_build_info metric carries it.
const Version = "0.1.0-dev"
