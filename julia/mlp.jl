# Path A: an MLP rebuilt from layer sizes, activation names and torch's flat parameter vector.
#
# torch.nn.utils.parameters_to_vector lays out each Linear as weight (out, in) flattened row-major,
# then bias (out). Read column-major, that weight block is an (in, out) matrix, so the layer's
# weight is W = transpose(reshape(view(θ, r), in, out)).
#
# The architecture is runtime data (sizes, ranges, activation codes in a Vector), not type
# parameters: every network has the same concrete type, so one compiled solve and adjoint serve
# all MLPs instead of recompiling for each new layer count or activation sequence.

struct DenseLayer
    n_in::Int
    n_out::Int
    weight::UnitRange{Int}
    bias::UnitRange{Int}  # empty without a bias
    has_bias::Bool
    act::Int  # index into ACTIVATION_NAMES (activations.jl)
end

struct MLP
    layers::Vector{DenseLayer}
    time_input::Bool
    n_params::Int
end

"""
    MLP(n_in, n_out, has_bias, activations, time_input) -> MLP

Describe an MLP whose layer `k` maps `n_in[k]` to `n_out[k]` features, has a bias when
`has_bias[k]`, and applies `activations[k]` (a name from `ACTIVATION_NAMES`). With `time_input`,
the time is appended as the last input feature of the first layer.
"""
function MLP(n_in::AbstractVector{<:Integer}, n_out::AbstractVector{<:Integer},
             has_bias::AbstractVector{Bool}, activations::AbstractVector{<:AbstractString},
             time_input::Bool)
    length(n_in) == length(n_out) == length(has_bias) == length(activations) ||
        throw(ArgumentError("layer descriptions must have equal lengths"))
    offset = 0
    layers = DenseLayer[]
    for k in eachindex(n_in)
        nw = n_in[k] * n_out[k]
        w = (offset + 1):(offset + nw)
        offset += nw
        b = (offset + 1):offset
        if has_bias[k]
            b = (offset + 1):(offset + n_out[k])
            offset += n_out[k]
        end
        push!(layers, DenseLayer(Int(n_in[k]), Int(n_out[k]), w, b, has_bias[k],
                                 activation_code(activations[k])))
    end
    return MLP(layers, time_input, offset)
end

function apply_layer(layer::DenseLayer, x, θ)
    W = transpose(reshape(view(θ, layer.weight), layer.n_in, layer.n_out))
    z = W * x
    if layer.has_bias
        z = z .+ view(θ, layer.bias)
    end
    return apply_activation(layer.act, z)
end

"Evaluate the MLP on a `(D, B)` state at time `t` (out-of-place, Zygote-differentiable)."
function (m::MLP)(u, θ, t)
    # vcat promotes, so a Dual time (Rosenbrock's time derivative) or a Dual state both work.
    x = m.time_input ? vcat(u, fill(t, 1, size(u, 2))) : u
    for layer in m.layers
        x = apply_layer(layer, x, θ)
    end
    return x
end

"""
    MLPField(mlp, σ)

The ODE right-hand side `(u, θ, s) -> σ * mlp(u, θ, σ * s)`: `σ = 1` is the MLP itself, `σ = -1`
the reversed-time field used for a decreasing `t` (the Python side sends `ts = -t`).
"""
struct MLPField
    mlp::MLP
    σ::Float64
end

(f::MLPField)(u, θ, s) = f.σ > 0 ? f.mlp(u, θ, s) : -f.mlp(u, θ, -s)
