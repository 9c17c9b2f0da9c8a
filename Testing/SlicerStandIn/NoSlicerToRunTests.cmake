# Command of every test registered against the stand-in Slicer package.
message(FATAL_ERROR "This test needs 3D Slicer: the extension was configured against the stand-in Slicer package")
