# A tiny workload run while the package precompiles, so that the first solve from Python does not
# spend minutes compiling: one explicit and one stiff MLP solve, forward and backward.
#
# It is guarded: an error here (an upstream change, a solver that cannot run during
# precompilation) must only cost speed, never make `using HybridNODE` fail.
@setup_workload begin
    u0 = [0.5 -0.2; 0.1 0.3]
    ts = [0.0, 0.05, 0.1]
    n_in = [2, 4]
    n_out = [4, 2]
    has_bias = [true, true]
    θ = collect(range(-0.3, 0.3; length = 2 * 4 + 4 + 4 * 2 + 2))
    ybar = ones(2, 2, 3)
    @compile_workload begin
        for algorithm in ("Tsit5", "Rodas5P")
            try
                result = forward_mlp(n_in, n_out, has_bias, "tanh,identity", false, θ, u0, ts;
                                     algorithm, sensitivity = "GaussAdjoint", abstol = 1e-6,
                                     reltol = 1e-6)
                backward(result, ybar)
            catch err
                @warn "HybridNODE precompile workload skipped for $algorithm" exception = err
            end
        end
    end
end
