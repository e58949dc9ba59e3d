# The Python twin of ompi-rank.c, on mpi4py: the same line, from a rank that links no libmpi itself.
# Allreduce on an int buffer is MPI_Allreduce of MPI_INT, so Python and C ranks can share a world
# (mpi4py's lowercase allreduce pickles objects through other collectives and would not match).
from array import array

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
appnum = comm.Get_attr(MPI.APPNUM)
mine, total = array("i", [rank + 1]), array("i", [0])
comm.Allreduce([mine, MPI.INT], [total, MPI.INT], op=MPI.SUM)
print(f"rank {rank} of {size} app {appnum if appnum is not None else -1} sum {total[0]} prog python", flush=True)
