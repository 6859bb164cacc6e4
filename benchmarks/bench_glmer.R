# Time lme4::glmer (nAGQ = 1) and glmmTMB on a data file; called by bench_glmm.py.
#
# Usage: Rscript benchmarks/bench_glmer.R DATA FORMULA FAMILY REPEATS TOOL
#
# TOOL is "glmer" or "glmmTMB". Reading the file is not timed; only the fitting call is
# (system.time, REPEATS times in this one R session, gc() before each). Prints:
#   RUN <i> <elapsed seconds>
#   OBJECTIVE <-2 log-likelihood>
#   BETA <values...>
#   SD <random-intercept SD>
args <- commandArgs(trailingOnly = TRUE)
path <- args[1]; form <- as.formula(args[2]); fam <- args[3]
repeats <- as.integer(args[4]); tool <- args[5]
d <- if (grepl("\\.parquet$", path)) as.data.frame(arrow::read_parquet(path)) else
  if (requireNamespace("data.table", quietly = TRUE)) as.data.frame(data.table::fread(path)) else
    read.csv(path)
family <- get(fam)()
if (tool == "glmer") {
  suppressPackageStartupMessages(library(lme4))
  fitfun <- function() glmer(form, data = d, family = family, nAGQ = 1)
} else {
  suppressPackageStartupMessages(library(glmmTMB))
  fitfun <- function() glmmTMB(form, data = d, family = family)
}
fit <- NULL
for (i in seq_len(repeats)) {
  invisible(gc())
  tm <- system.time(fit <- fitfun())
  cat(sprintf("RUN %d %.6f\n", i, tm[["elapsed"]]))
}
cat(sprintf("OBJECTIVE %.15g\n", -2 * as.numeric(logLik(fit))))
if (tool == "glmer") {
  cat("BETA", sprintf("%.15g", lme4::fixef(fit)), "\n")
  cat("SD", sprintf("%.15g", getME(fit, "theta")), "\n")
} else {
  cat("BETA", sprintf("%.15g", glmmTMB::fixef(fit)$cond), "\n")
  cat("SD", sprintf("%.15g", sqrt(as.numeric(glmmTMB::VarCorr(fit)$cond[[1]]))), "\n")
}
