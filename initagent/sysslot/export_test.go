package sysslot

import "os"

// MakeBlockNode is makeBlockNode for the external tests.
var MakeBlockNode = makeBlockNode

// AttachLoopLegacy attaches with LOOP_SET_FD and LOOP_SET_STATUS64, the
// path AttachLoop takes on kernels without LOOP_CONFIGURE.
func AttachLoopLegacy(image string) (*os.File, error) { return attachLoop(image, setFDLoop) }
